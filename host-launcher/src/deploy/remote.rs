//! The phone's side of a deploy as text: `adb devices` parsed, shell words quoted for
//! the remote `sh` (adb joins its arguments with spaces and hands the line to `sh -c`,
//! so every path is quoted once for that shell and the whole `su -c` command once more),
//! and `sha256sum` output read back. Pure functions, unit-tested without a device.

use std::collections::BTreeMap;

/// One line of `adb devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The serial to pass to `adb -s`.
    pub serial: String,
    /// `device` when usable; else `unauthorized`, `offline`, `no permissions ...`.
    pub state: String,
}

impl Attached {
    /// True when adb can talk to it.
    pub fn ready(&self) -> bool {
        self.state == "device"
    }
}

/// Parses `adb devices` output: the lines after `List of devices attached`, each
/// `SERIAL<tab>STATE`; daemon chatter (`* daemon started ...`) is skipped.
pub fn parse_devices(out: &str) -> Vec<Attached> {
    let mut in_list = false;
    let mut v = Vec::new();
    for line in out.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("List of devices attached") {
            in_list = true;
            continue;
        }
        if !in_list || line.trim().is_empty() || line.starts_with('*') {
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let serial = parts.next().unwrap_or_default().to_string();
        let state = parts.next().unwrap_or_default().trim().to_string();
        if !serial.is_empty() {
            v.push(Attached { serial, state });
        }
    }
    v
}

/// What to do about a device in `state`.
pub fn state_hint(state: &str) -> &'static str {
    if state == "unauthorized" {
        "unlock the phone and accept the \"Allow USB debugging\" prompt"
    } else if state == "offline" {
        "reconnect the cable, or run `adb kill-server` and retry"
    } else if state.starts_with("no permissions") {
        "this user may not open the USB device: fix the udev rules (see adb's message) or replug"
    } else {
        "wait until `adb devices` lists it as \"device\""
    }
}

/// A word no POSIX shell can carry: it holds a NUL byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} cannot be passed to the phone's shell: it contains a NUL byte")]
pub struct QuoteError(pub String);

/// Quotes `s` as one word for a POSIX shell (toybox/mksh on Android), with `shlex`.
pub fn quote(s: &str) -> Result<String, QuoteError> {
    shlex::try_quote(s)
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| QuoteError(s.to_string()))
}

/// The `adb shell` argument that runs `inner` (already quoted for `sh`) as root.
pub fn su(inner: &str) -> Result<String, QuoteError> {
    Ok(format!("su -c {}", quote(inner)?))
}

/// `sha256sum P1 P2 ...`, each path quoted.
pub fn sha256sum(paths: &[String]) -> Result<String, QuoteError> {
    let mut s = String::from("sha256sum");
    for p in paths {
        s.push(' ');
        s.push_str(&quote(p)?);
    }
    Ok(s)
}

/// Reads `sha256sum` output (`HASH  PATH` or `HASH *PATH` per line) into path → hash.
/// Lines that are not of that form (error messages, a merged stderr) are skipped, so
/// a file the device lacks is simply absent from the map.
pub fn parse_sha256sum(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let line = line.trim_end_matches('\r');
        let Some((hash, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let path = rest.trim_start_matches([' ', '*']);
        if !path.is_empty() {
            m.insert(path.to_string(), hash.to_ascii_lowercase());
        }
    }
    m
}

/// A file to put in place: staged path, final path, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Where `adb push` left it (`None` when unchanged and only its mode is set).
    pub staged: Option<String>,
    /// Its final path under the destination.
    pub target: String,
    /// Permission bits.
    pub mode: u32,
}

/// The root script that creates the destination (and a 0700 `secrets` directory
/// when `secrets_dir` is given), moves staged files into place, sets owner and modes
/// of every file, and removes the staging directory. Steps are joined with `&&`, so
/// the first failure stops it and its exit status says so.
pub fn install_script(
    dest: &str,
    dirs: &[String],
    secrets_dir: Option<&str>,
    files: &[Install],
    staging: &str,
) -> Result<String, QuoteError> {
    let mut steps = vec![format!("mkdir -p {}", quote(dest)?)];
    for d in dirs {
        steps.push(format!("mkdir -p {}", quote(d)?));
    }
    if let Some(s) = secrets_dir {
        steps.push(format!("mkdir -p {}", quote(s)?));
        steps.push(format!("chmod 0700 {}", quote(s)?));
    }
    for f in files {
        if let Some(staged) = &f.staged {
            steps.push(format!("mv -f {} {}", quote(staged)?, quote(&f.target)?));
        }
    }
    for f in files {
        steps.push(format!("chown 0:0 {}", quote(&f.target)?));
        steps.push(format!("chmod {:04o} {}", f.mode, quote(&f.target)?));
    }
    steps.push(format!("rm -rf {}", quote(staging)?));
    Ok(steps.join(" && "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What `sh -c LINE` receives as argv after word splitting.
    fn sh_words(line: &str) -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("for w in {line}; do printf '%s\\n' \"$w\"; done"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn devices_are_parsed_with_their_state() {
        let out = "* daemon not running; starting now at tcp:5037\n\
                   * daemon started successfully\n\
                   List of devices attached\n\
                   R58M123\tdevice\n\
                   emulator-5554\toffline\n\
                   ZY22\tno permissions (missing udev rules? user is in the plugdev group)\n\n";
        let d = parse_devices(out);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].serial, "R58M123");
        assert!(d[0].ready());
        assert_eq!(d[1].state, "offline");
        assert!(d[2].state.starts_with("no permissions"));
        assert!(state_hint(&d[2].state).contains("udev"));
        assert!(parse_devices("List of devices attached\n\n").is_empty());
    }

    #[test]
    fn quoting_survives_the_shell_twice() {
        for s in [
            "/data/sovereign/Image",
            "/data/sovereign test/it's",
            "a;b&c$(x)`y`\"z\\",
            "",
        ] {
            assert_eq!(sh_words(&quote(s).unwrap()), [s], "one level: {s:?}");
        }
        assert_eq!(
            quote("/data/sovereign/root.img").unwrap(),
            "/data/sovereign/root.img"
        );
        assert_eq!(quote("a\0b"), Err(QuoteError("a\0b".into())));
        // What adb hands the remote sh for `su -c CMD`: sh splits it into su, -c, CMD;
        // su then gives CMD to sh, which splits it into the quoted paths.
        let paths = vec!["/d/it's here".to_string(), "/d/b".to_string()];
        let line = su(&sha256sum(&paths).unwrap()).unwrap();
        let outer = sh_words(&line);
        assert_eq!(outer[..2], ["su", "-c"]);
        assert_eq!(outer.len(), 3, "{outer:?}");
        assert_eq!(sh_words(&outer[2]), ["sha256sum", "/d/it's here", "/d/b"]);
    }

    #[test]
    fn checksums_are_read_and_missing_files_left_out() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let out = format!(
            "{a}  /data/sovereign/Image\r\n\
             sha256sum: /data/sovereign/root.img: No such file or directory\n\
             {b} */data/sovereign/sovereign test\n"
        );
        let m = parse_sha256sum(&out);
        assert_eq!(m.len(), 2);
        assert_eq!(m["/data/sovereign/Image"], a);
        assert_eq!(m["/data/sovereign/sovereign test"], "b".repeat(64));
    }

    #[test]
    fn install_script_moves_then_sets_modes_then_cleans_up() {
        let s = install_script(
            "/data/sovereign",
            &[],
            Some("/data/sovereign/secrets"),
            &[
                Install {
                    staged: Some("/data/local/tmp/st/sovereign".into()),
                    target: "/data/sovereign/sovereign".into(),
                    mode: 0o755,
                },
                Install {
                    staged: None,
                    target: "/data/sovereign/root.img".into(),
                    mode: 0o644,
                },
            ],
            "/data/local/tmp/st",
        )
        .unwrap();
        assert_eq!(
            s,
            "mkdir -p /data/sovereign && mkdir -p /data/sovereign/secrets && \
             chmod 0700 /data/sovereign/secrets && \
             mv -f /data/local/tmp/st/sovereign /data/sovereign/sovereign && \
             chown 0:0 /data/sovereign/sovereign && chmod 0755 /data/sovereign/sovereign && \
             chown 0:0 /data/sovereign/root.img && chmod 0644 /data/sovereign/root.img && \
             rm -rf /data/local/tmp/st"
        );
    }
}
