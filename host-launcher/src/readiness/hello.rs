//! The Hello rule: the guest that says Hello must speak this launcher's protocol
//! version and have the spec's CID, and on AF_VSOCK the connection must come from
//! that CID.

use protocol::messages::Hello;
use protocol::PROTOCOL_VERSION;
use thiserror::Error;

/// Why a Hello was refused (the `control` stage fails with this text).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HelloRefused {
    #[error("the guest speaks control protocol version {guest}, this launcher {PROTOCOL_VERSION}: rebuild the image and the launcher from one tree")]
    Version {
        /// The guest's protocol version.
        guest: u32,
    },
    #[error("the guest says its CID is {guest}, the spec gives {spec}")]
    Cid {
        /// The CID in the Hello.
        guest: u32,
        /// The spec's CID.
        spec: u32,
    },
    #[error("a connection from CID {peer} claimed to be the guest (spec CID {spec}): refused")]
    Peer {
        /// The connection's source CID.
        peer: u32,
        /// The spec's CID.
        spec: u32,
    },
}

/// Applies the Hello rule for a guest of CID `cid`; `peer_cid` is the connection's
/// source CID on AF_VSOCK (`None` through vhost-device-vsock).
pub fn assess_hello(hello: &Hello, cid: u32, peer_cid: Option<u32>) -> Result<(), HelloRefused> {
    if hello.version != PROTOCOL_VERSION {
        return Err(HelloRefused::Version {
            guest: hello.version,
        });
    }
    if hello.cid != cid {
        return Err(HelloRefused::Cid {
            guest: hello.cid,
            spec: cid,
        });
    }
    match peer_cid {
        Some(peer) if peer != cid => Err(HelloRefused::Peer { peer, spec: cid }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, cid: u32) -> Hello {
        Hello {
            version,
            cid,
            kernel_release: "6.12".into(),
            boot_time_ms: 1,
            session: None,
        }
    }

    #[test]
    fn the_version_then_the_cid_then_the_peer_is_checked() {
        let ok = hello(PROTOCOL_VERSION, 10);
        assert_eq!(assess_hello(&ok, 10, None), Ok(()));
        assert_eq!(assess_hello(&ok, 10, Some(10)), Ok(()));
        assert_eq!(
            assess_hello(&hello(99, 11), 10, Some(12)),
            Err(HelloRefused::Version { guest: 99 })
        );
        assert_eq!(
            assess_hello(&hello(PROTOCOL_VERSION, 11), 10, Some(12)),
            Err(HelloRefused::Cid {
                guest: 11,
                spec: 10
            })
        );
        let e = assess_hello(&ok, 10, Some(12)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a connection from CID 12 claimed to be the guest (spec CID 10): refused"
        );
    }
}
