//! Running `adb`: finding the program, choosing the device (`adb devices`, `--serial`),
//! and the three calls a deploy needs (`shell`, `push`, `devices`), each always with
//! `-s SERIAL` once a device is chosen so that a second phone plugged in mid-deploy
//! cannot receive half of the files.

use super::remote::{parse_devices, state_hint, Attached};
use super::DeployError;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What a remote command returned.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Exit status (adb ≥ 7 passes the remote status through); `None` if killed.
    pub status: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (merged into stdout by devices without adb's shell protocol).
    pub stderr: String,
}

impl Remote {
    /// stdout and stderr on one line each trimmed, for messages.
    pub fn text(&self) -> String {
        let both = format!("{} {}", self.stdout.trim(), self.stderr.trim());
        both.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// The adb program and the device it talks to.
#[derive(Debug, Clone)]
pub struct Adb {
    /// The adb executable.
    pub program: PathBuf,
    /// The chosen device (`-s`), once chosen.
    pub serial: Option<String>,
}

impl Adb {
    /// An adb without a chosen device.
    pub fn new(program: PathBuf) -> Adb {
        Adb {
            program,
            serial: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        if let Some(s) = &self.serial {
            c.arg("-s").arg(s);
        }
        c.args(args).stdin(Stdio::null());
        c
    }

    /// How a call is shown in messages: `adb -s SERIAL ARGS...`.
    pub fn render(&self, args: &[&str]) -> String {
        let mut v = vec!["adb".to_string()];
        if let Some(s) = &self.serial {
            v.push("-s".into());
            v.push(s.clone());
        }
        v.extend(args.iter().map(|a| a.to_string()));
        v.join(" ")
    }

    fn output(&self, args: &[&str]) -> Result<Output, DeployError> {
        log::debug!("{}", self.render(args));
        self.command(args)
            .output()
            .map_err(|cause| DeployError::AdbSpawn {
                program: self.program.clone(),
                cause,
            })
    }

    /// `adb devices`, parsed.
    pub fn devices(&self) -> Result<Vec<Attached>, DeployError> {
        let o = self.output(&["devices"])?;
        if !o.status.success() {
            return Err(self.failed(&["devices"], &o));
        }
        Ok(parse_devices(&String::from_utf8_lossy(&o.stdout)))
    }

    /// `adb shell LINE`: the remote `sh -c LINE`. A non-zero remote status is not an
    /// error here; callers judge the output.
    pub fn shell(&self, line: &str) -> Result<Remote, DeployError> {
        let o = self.output(&["shell", line])?;
        Ok(Remote {
            status: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }

    /// `adb push LOCAL REMOTE`; fails with adb's message.
    pub fn push(&self, local: &Path, remote: &str) -> Result<(), DeployError> {
        let local_s = local.display().to_string();
        let args = ["push", local_s.as_str(), remote];
        let o = self.output(&args)?;
        if o.status.success() {
            Ok(())
        } else {
            Err(self.failed(&args, &o))
        }
    }

    fn failed(&self, args: &[&str], o: &Output) -> DeployError {
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        DeployError::AdbFailed {
            command: self.render(args),
            status: o
                .status
                .code()
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            detail: text.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }
}

/// Picks the device: `serial` when given (it must be attached and ready), else the one
/// ready device; none or several is an error that says what to do.
pub fn select(attached: &[Attached], serial: Option<&str>) -> Result<String, DeployError> {
    let listing = |v: &[&Attached]| {
        v.iter()
            .map(|a| format!("{} ({})", a.serial, a.state))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(want) = serial {
        return match attached.iter().find(|a| a.serial == want) {
            Some(a) if a.ready() => Ok(a.serial.clone()),
            Some(a) => Err(DeployError::NotReady {
                serial: a.serial.clone(),
                state: a.state.clone(),
                hint: state_hint(&a.state),
            }),
            None => Err(DeployError::SerialNotFound {
                serial: want.to_string(),
                attached: if attached.is_empty() {
                    "none".into()
                } else {
                    listing(&attached.iter().collect::<Vec<_>>())
                },
            }),
        };
    }
    let ready: Vec<&Attached> = attached.iter().filter(|a| a.ready()).collect();
    match ready.as_slice() {
        [one] => Ok(one.serial.clone()),
        [] => match attached.first() {
            Some(a) => Err(DeployError::NotReady {
                serial: a.serial.clone(),
                state: a.state.clone(),
                hint: state_hint(&a.state),
            }),
            None => Err(DeployError::NoDevice),
        },
        several => Err(DeployError::SeveralDevices {
            count: several.len(),
            list: listing(several),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(serial: &str, state: &str) -> Attached {
        Attached {
            serial: serial.into(),
            state: state.into(),
        }
    }

    #[test]
    fn one_ready_device_is_chosen_without_a_serial() {
        let d = [dev("A", "device"), dev("B", "offline")];
        assert_eq!(select(&d, None).unwrap(), "A");
        assert_eq!(select(&d, Some("A")).unwrap(), "A");
    }

    #[test]
    fn none_several_unknown_and_unready_say_what_to_do() {
        let e = select(&[], None).unwrap_err().to_string();
        assert!(e.starts_with("no device attached"), "{e}");
        let two = [dev("A", "device"), dev("B", "device")];
        let e = select(&two, None).unwrap_err().to_string();
        assert!(
            e.contains("2 devices attached (A (device), B (device))") && e.contains("--serial"),
            "{e}"
        );
        assert_eq!(select(&two, Some("B")).unwrap(), "B");
        let e = select(&two, Some("C")).unwrap_err().to_string();
        assert!(e.contains("device C is not attached"), "{e}");
        let e = select(&[dev("A", "unauthorized")], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"unauthorized\"") && e.contains("Allow USB debugging"),
            "{e}"
        );
    }

    #[test]
    fn calls_carry_the_serial() {
        let mut adb = Adb::new("adb".into());
        assert_eq!(adb.render(&["devices"]), "adb devices");
        adb.serial = Some("R58".into());
        assert_eq!(
            adb.render(&["shell", "uname -m"]),
            "adb -s R58 shell uname -m"
        );
    }
}
