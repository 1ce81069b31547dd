//! Well-known vsock addresses. Fixed by the design so the guest needs no configuration
//! to find the host.

/// The host's vsock CID as seen from any guest (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// Guest → host control channel port (the launcher listens here before the VM starts).
pub const CONTROL_PORT: u32 = 1025;

/// Guest → host port where gvproxy accepts the Ethernet frame stream.
pub const NETWORK_PORT: u32 = 1024;

/// Guest → host port for bulk transfers (exports, dumps): one connection per
/// transfer, see [`crate::bulk`].
pub const DATA_PORT: u32 = 1026;

/// The guest's source ports for its connections to the host: below 1024, so only PID 1
/// (the one guest process with `CAP_NET_BIND_SERVICE`) can bind them. On crosvm the
/// host refuses a connection from any other port.
pub const RESERVED_SOURCE_PORTS: std::ops::RangeInclusive<u32> = 600..=1023;

/// The CID of the default `sql` VM.
pub const DEFAULT_GUEST_CID: u32 = 10;

/// Returns why `cid` cannot be a guest's CID, or `None` when it can.
///
/// 0 (hypervisor), 1 (local), 2 (host) and `u32::MAX` (any) are reserved by vsock.
pub fn reserved_cid_reason(cid: u32) -> Option<&'static str> {
    match cid {
        0 => Some("0 is reserved for the hypervisor"),
        1 => Some("1 is reserved for local loopback"),
        2 => Some("2 is the host's own CID"),
        u32::MAX => Some("u32::MAX means 'any CID'"),
        _ => None,
    }
}

/// tailscaled's UDP port in the guest (fixed, so a gvproxy port forward could pin it;
/// the guest's packet policy opens it, and nothing else may take it).
pub const TAILSCALE_WIREGUARD: u16 = 41641;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_cids_are_named() {
        for cid in [0, 1, 2, u32::MAX] {
            assert!(reserved_cid_reason(cid).is_some(), "{cid}");
        }
        assert_eq!(reserved_cid_reason(DEFAULT_GUEST_CID), None);
        assert_eq!(reserved_cid_reason(3), None);
    }
}
