//! The boot benchmark's peer: the systemd image `scripts/build-peer-image.sh` builds
//! (the same Debian packages, Debian's cloud kernel and initramfs, upstream
//! gvforwarder, tailscaled and PostgreSQL as units), launched with the gvproxy,
//! vhost-device-vsock and QEMU command lines `sovereign start --dry-run` renders for
//! our guest, so that only the image, the kernel and the init differ. Timed to the
//! same witness as ours: psql from the second tailnet node, by name.

use sovereign_tests::artifacts::Artifacts;
use sovereign_tests::process::{run, text};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::{Vm, VmOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The peer's kernel command line: Debian's usual, with the console on the serial port.
/// (printk.devkmsg=on: the report unit writes more lines than /dev/kmsg lets through
/// by default.)
const CMDLINE: &str = "console=ttyS0 root=/dev/vda rw panic=-1 printk.devkmsg=on";
/// The tailnet name the peer's units give it.
pub const HOSTNAME: &str = "sql-peer";
/// What the peer's report unit prints before each of its lines.
const REPORT_PREFIX: &str = "sovereign-peer: ";
/// How long the peer may take to answer psql.
const WITNESS_DEADLINE: Duration = Duration::from_secs(600);
/// How long a powered-down peer may take to stop.
const POWERDOWN_DEADLINE: Duration = Duration::from_secs(120);

/// The cached output of `scripts/build-peer-image.sh`.
pub struct PeerImage {
    dir: PathBuf,
}

impl PeerImage {
    /// The image set in `dir`, if it is complete.
    pub fn open(dir: &Path) -> Result<PeerImage, String> {
        for f in ["root.img", "vmlinuz", "initrd.img", "postgres.password"] {
            if !dir.join(f).exists() {
                return Err(format!(
                    "{} has no {f}: run scripts/build-peer-image.sh",
                    dir.display()
                ));
            }
        }
        Ok(PeerImage {
            dir: dir.to_path_buf(),
        })
    }

    /// The superuser's password baked into the image.
    pub fn password(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.password"))
            .map(|p| p.trim().to_string())
            .unwrap_or_default()
    }

    /// The root image's apparent size, bytes.
    pub fn root_bytes(&self) -> Option<u64> {
        std::fs::metadata(self.dir.join("root.img"))
            .ok()
            .map(|m| m.len())
    }

    /// VM options that boot this image on the lab's tailnet (whose auth key and login
    /// server go into the copy of the image before each first boot).
    pub fn vm_options(&self, lab: VmOptions) -> VmOptions {
        VmOptions {
            kernel: Some(self.dir.join("vmlinuz")),
            initrd: Some(self.dir.join("initrd.img")),
            root_image: Some(self.dir.join("root.img")),
            ..lab
        }
    }
}

/// What one boot of the peer showed.
#[derive(Debug, Clone, Default)]
pub struct PeerBoot {
    /// From launching gvproxy until psql from the second node answered.
    pub witness_ms: u64,
    /// systemd-analyze's first line ("Startup finished in ...").
    pub startup: Option<String>,
    /// (kernel, initrd, userspace) seconds, read from `startup`.
    pub phases: Option<(f64, f64, f64)>,
    /// Resident KiB by process name, once the boot finished.
    pub rss_kib: Vec<(String, u64)>,
}

/// Writes the lab's login server and auth key into the copied image, where the
/// peer's tailscale-up unit reads them (debugfs: the image is not mounted).
pub fn give_tailnet(vm: &Vm, login_server: &str, key_file: &Path) -> Result<(), String> {
    let home = vm.home.path();
    let image = home.join("root.img");
    let server = home.join("login-server");
    let env = home.join("tailscaled.env");
    let script = home.join("debugfs-tailnet.txt");
    let commands = format!(
        "write {} /etc/sovereign-peer/login-server\nwrite {} /etc/sovereign-peer/authkey\n\
         sif /etc/sovereign-peer/authkey mode 0100600\nwrite {} /etc/sovereign-peer/tailscaled.env\n",
        server.display(),
        key_file.display(),
        env.display()
    );
    // A plain-HTTP control server serves its DERP over plain HTTP too, which tailscaled
    // only speaks when told (the guest's init does the same).
    let env_text = if login_server.starts_with("http://") {
        "TS_DEBUG_USE_DERP_HTTP=1\n"
    } else {
        ""
    };
    std::fs::write(&server, login_server)
        .and_then(|()| std::fs::write(&env, env_text))
        .and_then(|()| std::fs::write(&script, commands))
        .map_err(|e| e.to_string())?;
    debugfs(&image, &script)
}

/// Runs a debugfs command file against the image, read-write.
fn debugfs(image: &Path, script: &Path) -> Result<(), String> {
    let o = run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(script)
        .arg(image));
    if !o.status.success() {
        return Err(format!("debugfs on {}: {}", image.display(), text(&o)));
    }
    Ok(())
}

/// Writes the forwarder benchmark's control port into the copied image: the peer's
/// stream unit runs only when it is there (so the timed boots run without it).
pub fn give_stream_port(vm: &Vm, port: u16) -> Result<(), String> {
    let home = vm.home.path();
    let (file, script) = (home.join("stream.port"), home.join("debugfs-stream.txt"));
    std::fs::write(&file, format!("{port}\n"))
        .and_then(|()| {
            std::fs::write(
                &script,
                format!(
                    "rm /etc/sovereign-peer/stream.port\nwrite {} /etc/sovereign-peer/stream.port\n",
                    file.display()
                ),
            )
        })
        .map_err(|e| e.to_string())?;
    debugfs(&home.join("root.img"), &script)
}

/// The processes of one peer boot; killed when dropped.
struct Running {
    children: Vec<(String, Child)>,
    qmp: PathBuf,
    /// QEMU's serial console file.
    console: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `sovereign start --dry-run`'s commands for `vm`, split into words.
fn rendered_commands(vm: &Vm) -> Result<Vec<Vec<String>>, String> {
    let o = run(&mut vm.command("start", &["--dry-run"]));
    if !o.status.success() {
        return Err(format!("start --dry-run: {}", text(&o)));
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| shlex::split(l).ok_or_else(|| format!("cannot split {l:?}")))
        .collect()
}

/// Every absolute path an argument names (`unix://P`, `file:P`, `k=P,k=P`).
fn paths_in(arg: &str) -> Vec<PathBuf> {
    arg.split(',')
        .map(|part| part.rsplit('=').next().unwrap_or(part))
        .map(|p| {
            p.trim_start_matches("unix://")
                .trim_start_matches("unix:")
                .trim_start_matches("file:")
        })
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// The QEMU arguments for the peer: its own kernel command line, a QMP socket in
/// place of the (absent) monitor, for an ACPI power-down, and only the root disk (the
/// peer keeps its cluster there, as Debian does; our data and backup disks would be
/// empty devices to it).
fn peer_qemu_args(args: &[String], qmp: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-drive" | "-device" => {
                let Some(value) = it.next() else { break };
                let other_disk = if a == "-drive" {
                    !value.contains(",id=root,")
                } else {
                    value.starts_with("virtio-blk-pci,") && !value.ends_with("drive=root")
                };
                if !other_disk {
                    out.extend([a.clone(), value.clone()]);
                }
            }
            "-append" => {
                it.next();
                out.extend(["-append".to_string(), CMDLINE.to_string()]);
            }
            "-monitor" => {
                it.next();
                out.extend([
                    "-qmp".to_string(),
                    format!("unix:{},server=on,wait=off", qmp.display()),
                ]);
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

fn wait_for_path(p: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Launches gvproxy, vhost-device-vsock and QEMU as `start` would, in that order, each
/// once the one before is listening.
fn launch(vm: &Vm) -> Result<Running, String> {
    let commands = rendered_commands(vm)?;
    let qmp = vm.home.path().join("peer-qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let mut running = Running {
        children: Vec::new(),
        qmp: qmp.clone(),
        console: PathBuf::new(),
    };
    for words in commands {
        let (program, args) = words.split_first().ok_or("an empty command")?;
        let name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for p in args.iter().flat_map(|a| paths_in(a)) {
            if let Some(parent) = p.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            // A killed gvproxy leaves its sockets behind, and the next one could not
            // bind them (start clears its run directory the same way). QEMU only
            // connects to the sockets it names.
            let listener = !name.starts_with("qemu-system");
            if listener && std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&p);
            }
        }
        let args = if name.starts_with("qemu-system") {
            if let Some(file) = args
                .iter()
                .position(|a| a == "-serial")
                .and_then(|i| args.get(i + 1))
                .and_then(|a| a.strip_prefix("file:"))
            {
                running.console = PathBuf::from(file);
                let _ = std::fs::remove_file(file);
            }
            peer_qemu_args(args, &qmp)
        } else {
            args.to_vec()
        };
        // What this command will listen on, to wait for before the next.
        let listens: Option<PathBuf> = match name.as_str() {
            "gvproxy" => args
                .iter()
                .position(|a| a == "-services")
                .and_then(|i| args.get(i + 1))
                .and_then(|a| paths_in(a).into_iter().next()),
            "vhost-device-vsock" => args.iter().find(|a| a.contains("socket=")).and_then(|a| {
                a.split(',')
                    .find_map(|kv| kv.strip_prefix("socket="))
                    .map(PathBuf::from)
            }),
            _ => None,
        };
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        running.children.push((name.clone(), child));
        if let Some(p) = listens {
            if !wait_for_path(&p, Duration::from_secs(10)) {
                return Err(format!("{name} never listened on {}", p.display()));
            }
        }
    }
    Ok(running)
}

/// Polls psql from `peer` until `host` answers; milliseconds since `t0`. `password`
/// is asked each time: ours exists only once `start` has written it.
/// Gives up early when `gone` says the VM is no more.
pub fn witness(
    peer: &TailNode,
    host: &str,
    password: impl Fn() -> Option<String>,
    t0: Instant,
    mut gone: impl FnMut() -> bool,
) -> Option<u64> {
    let dsn = format!("host={host} port=5432 user=postgres dbname=postgres connect_timeout=2");
    while t0.elapsed() < WITNESS_DEADLINE && !gone() {
        if let Some(password) = password() {
            let o = peer
                .command("psql")
                .args([&dsn, "-Atc", "select 1"])
                .env("PGPASSWORD", password)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if o.is_ok_and(|s| s.success()) {
                return u64::try_from(t0.elapsed().as_millis()).ok();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// "Startup finished in 1.5s (kernel) + 2.1s (initrd) + 8.3s (userspace) = 11.9s".
fn startup_phases(line: &str) -> Option<(f64, f64, f64)> {
    let seconds_before = |tag: &str| -> Option<f64> {
        let end = line.find(tag)?;
        let word = line[..end].split_whitespace().last()?;
        parse_systemd_span(word)
    };
    Some((
        seconds_before("(kernel)")?,
        seconds_before("(initrd)").unwrap_or(0.0),
        seconds_before("(userspace)")?,
    ))
}

/// systemd's spans: "850ms", "2.104s", "1min 3.2s" (only the last word is given here,
/// so minutes are not expected on a benchmark boot).
fn parse_systemd_span(word: &str) -> Option<f64> {
    if let Some(ms) = word.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    word.strip_suffix('s')?.parse().ok()
}

/// The report unit's lines in the console, once its memory line is there.
fn read_report(console: &Path, limit: Duration) -> (Option<String>, Vec<(String, u64)>) {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(REPORT_PREFIX).map(|(_, rest)| rest.trim()))
            .collect();
        if let Some(rss) = lines.iter().find_map(|l| l.strip_prefix("rss_kib")) {
            let startup = lines
                .iter()
                .find(|l| l.starts_with("Startup finished"))
                .map(|l| l.to_string());
            let rss = rss
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect();
            return (startup, rss);
        }
        if t.elapsed() > limit {
            return (None, Vec::new());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Asks QEMU (QMP) for an ACPI power-down and waits for it to exit; kills it when it
/// does not stop in time. Returns whether it stopped by itself.
fn power_down(running: &mut Running) -> bool {
    let asked = (|| -> std::io::Result<()> {
        let s = UnixStream::connect(&running.qmp)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line)?; // greeting
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        line.clear();
        r.read_line(&mut line)?;
        w.write_all(b"{\"execute\":\"system_powerdown\"}\n")?;
        line.clear();
        r.read_line(&mut line)?;
        Ok(())
    })();
    if let Err(e) = asked {
        eprintln!("    QMP power-down: {e}");
    }
    let Some((_, qemu)) = running
        .children
        .iter_mut()
        .find(|(n, _)| n.starts_with("qemu-system"))
    else {
        return false;
    };
    let t = Instant::now();
    while t.elapsed() < POWERDOWN_DEADLINE {
        if let Ok(Some(_)) = qemu.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Boots the peer once, times psql from `peer` by name, reads its report, runs
/// `while_up` (given QEMU's pid), and powers it down.
pub fn boot<T>(
    vm: &Vm,
    peer: &TailNode,
    image: &PeerImage,
    what: &str,
    while_up: impl FnOnce(Option<u32>) -> T,
) -> Result<(PeerBoot, T), String> {
    eprintln!("==> systemd peer: {what}");
    let t0 = Instant::now();
    let mut running = launch(vm)?;
    let console = running.console.clone();
    let qemu_exited = || {
        running
            .children
            .iter_mut()
            .any(|(n, c)| n.starts_with("qemu-system") && !matches!(c.try_wait(), Ok(None)))
    };
    let found = witness(peer, HOSTNAME, || Some(image.password()), t0, qemu_exited);
    let witness_ms = found.ok_or_else(|| {
        let tail: String = std::fs::read_to_string(&console)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!("psql to {HOSTNAME} never answered (or QEMU exited); console:\n{tail}")
    })?;
    eprintln!(
        "    psql answered after {:.2} s",
        witness_ms as f64 / 1000.0
    );
    let (startup, rss_kib) = read_report(&console, Duration::from_secs(120));
    let qemu = running
        .children
        .iter()
        .find(|(n, _)| n.starts_with("qemu-system"))
        .map(|(_, c)| c.id());
    let extra = while_up(qemu);
    if !power_down(&mut running) {
        eprintln!("    the peer did not power down in time: killed");
    }
    drop(running);
    let boot = PeerBoot {
        witness_ms,
        phases: startup.as_deref().and_then(startup_phases),
        startup,
        rss_kib,
    };
    Ok((boot, extra))
}

/// A VM home for the peer: our harness's spec with the peer's kernel, initrd and image.
pub fn new_vm(a: &Artifacts, image: &PeerImage, lab: VmOptions) -> Vm {
    Vm::new(a, &image.vm_options(lab))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_analyze_is_read() {
        let l =
            "Startup finished in 1.532s (kernel) + 2.104s (initrd) + 8.337s (userspace) = 11.974s";
        assert_eq!(startup_phases(l), Some((1.532, 2.104, 8.337)));
        let l = "Startup finished in 850ms (kernel) + 3.2s (userspace) = 4.05s";
        assert_eq!(startup_phases(l), Some((0.85, 0.0, 3.2)));
        assert_eq!(startup_phases("Bootup is not yet finished"), None);
    }

    #[test]
    fn qemu_gets_the_peers_cmdline_and_a_qmp_socket() {
        let args: Vec<String> = [
            "-device",
            "vhost-user-vsock-pci,chardev=vsock",
            "-drive",
            "file=/h/root.img,if=none,id=root,format=raw,cache=writeback",
            "-device",
            "virtio-blk-pci,drive=root",
            "-drive",
            "file=/h/postgres.img,if=none,id=data,format=raw,cache=writeback",
            "-device",
            "virtio-blk-pci,drive=data",
            "-kernel",
            "k",
            "-append",
            "console=ttyS0 init=/sbin/init",
            "-monitor",
            "none",
        ]
        .map(String::from)
        .to_vec();
        let out = peer_qemu_args(&args, Path::new("/r/qmp.sock"));
        assert_eq!(
            out,
            [
                "-device",
                "vhost-user-vsock-pci,chardev=vsock",
                "-drive",
                "file=/h/root.img,if=none,id=root,format=raw,cache=writeback",
                "-device",
                "virtio-blk-pci,drive=root",
                "-kernel",
                "k",
                "-append",
                CMDLINE,
                "-qmp",
                "unix:/r/qmp.sock,server=on,wait=off"
            ]
        );
    }

    #[test]
    fn paths_are_found_in_arguments() {
        assert_eq!(
            paths_in("guest-cid=10,socket=/r/vhost.sock,uds-path=/r/vsock"),
            [PathBuf::from("/r/vhost.sock"), PathBuf::from("/r/vsock")]
        );
        assert_eq!(paths_in("unix:///r/gv.sock"), [PathBuf::from("/r/gv.sock")]);
        assert_eq!(
            paths_in("file:/h/console.log"),
            [PathBuf::from("/h/console.log")]
        );
        assert!(paths_in("q35,memory-backend=mem").is_empty());
    }
}
