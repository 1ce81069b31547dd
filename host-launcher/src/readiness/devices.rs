//! The `devices` rule: the guest's device report is accepted when it shows a virtio
//! socket (vsock) device, two virtio block devices (root and data) and every device
//! bound to its expected driver.

use protocol::messages::{DeviceKind, DeviceReport};

/// Applies the `devices` rule; `Ok` carries the progress summary, `Err` every reason.
pub fn assess_devices(r: &DeviceReport) -> Result<String, Vec<String>> {
    let mut reasons = Vec::new();
    let sockets: Vec<_> = r.of_kind(DeviceKind::Socket).collect();
    let blocks: Vec<_> = r.of_kind(DeviceKind::Block).collect();
    if sockets.is_empty() {
        reasons.push("no virtio socket (vsock) device found: the VMM attached none".to_string());
    }
    if blocks.len() < 2 {
        reasons.push(format!(
            "{} virtio block device(s) found, 2 needed (root and data)",
            blocks.len()
        ));
    }
    for d in r.devices.iter().filter(|d| !d.is_bound()) {
        reasons.push(format!(
            "{} device {} (virtio id {}) has driver {}, expected {}",
            d.kind.label(),
            d.address,
            d.device_id,
            d.driver.as_deref().unwrap_or("none"),
            d.expected_driver().unwrap_or("any")
        ));
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let mut parts = Vec::new();
    for s in &sockets {
        parts.push(format!("vsock→{}", s.driver.as_deref().unwrap_or("?")));
    }
    parts.push(format!(
        "{}×{}",
        blocks.len(),
        blocks
            .first()
            .and_then(|b| b.driver.as_deref())
            .unwrap_or("?")
    ));
    for d in r
        .devices
        .iter()
        .filter(|d| !matches!(d.kind, DeviceKind::Socket | DeviceKind::Block))
    {
        parts.push(format!("{}→{}", d.kind, d.driver.as_deref().unwrap_or("?")));
    }
    Ok(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::tests::{dev, good_report};

    #[test]
    fn device_rule_counts_disks_and_sockets() {
        let mut r = good_report();
        r.devices.remove(2);
        r.devices.remove(0);
        let e = assess_devices(&r).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("no virtio socket"));
        assert!(e[1].contains("1 virtio block device(s) found, 2 needed"));
        let mut r = good_report();
        r.devices
            .push(dev(DeviceKind::Console, 3, Some("virtio_console")));
        assert_eq!(
            assess_devices(&r).unwrap(),
            "vsock→vmw_vsock_virtio_transport, 2×virtio_blk, console→virtio_console"
        );
    }
}
