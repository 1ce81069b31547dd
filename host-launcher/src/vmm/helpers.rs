//! The VMM's companions: vhost-device-vsock (the vsock device under QEMU; guest port P
//! arrives on the unix socket `<uds>_P`) and gvproxy (the guest's network; flags as
//! gvproxy v0.8.9 parses them). gvproxy runs with plain `-listen` endpoints only:
//! `-listen-qemu`/`-listen-bess`/`-listen-vfkit` would switch its framing globally.

use crate::rundir::RunDir;
use crate::spec::{Backend, Spec};
use protocol::config::NetworkConfig;
use protocol::ports::NETWORK_PORT;

/// `vhost-device-vsock --vm guest-cid=..,socket=..,uds-path=..`.
pub fn vhost_device_vsock_args(spec: &Spec, run: &RunDir) -> Vec<String> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={},socket={},uds-path={}",
            spec.cid,
            run.vhost_socket().display(),
            run.vsock_uds().display()
        ),
    ]
}

/// gvproxy's arguments: the frame endpoint (on crosvm a unix socket the supervisor
/// relays vsock port 1024 to, after checking the peer's CID; under QEMU the
/// vhost-device-vsock `<uds>_1024` socket), the services API socket
/// (`-services`: the HTTP API without the `/connect` endpoint, for port exposes), MTU,
/// no SSH forward, pid and log files.
pub fn gvproxy_args(spec: &Spec, run: &RunDir) -> Vec<String> {
    let frames = match spec.vmm.backend {
        Backend::Crosvm => format!("unix://{}", run.gvproxy_frames_socket().display()),
        Backend::Qemu => format!("unix://{}", run.vsock_port_socket(NETWORK_PORT).display()),
    };
    vec![
        "-listen".into(),
        frames,
        "-services".into(),
        format!("unix://{}", run.gvproxy_api_socket().display()),
        "-mtu".into(),
        NetworkConfig::default().mtu.to_string(),
        "-ssh-port".into(),
        "-1".into(),
        "-pid-file".into(),
        run.pid_file(crate::rundir::Role::Gvproxy)
            .display()
            .to_string(),
        "-log-file".into(),
        spec.log_file("gvproxy").display().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::tests::phone_spec;

    #[test]
    fn gvproxy_listens_behind_the_supervisors_cid_check_under_crosvm() {
        let s = phone_spec();
        let a = gvproxy_args(&s, &RunDir::new(&s.run_dir)).join(" ");
        assert_eq!(
            a,
            "-listen unix:///data/sovereign/run/sql/gvproxy-net.sock -services unix:///data/sovereign/run/sql/gvproxy-api.sock -mtu 1500 -ssh-port -1 \
             -pid-file /data/sovereign/run/sql/gvproxy.pid -log-file /data/sovereign/sql-gvproxy.log"
        );
    }
}
