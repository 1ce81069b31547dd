//! The phone sink: a notification on the phone itself, posted as root through Android's
//! `cmd notification post` (the shell's notification service command). The tag stays
//! the same for one condition, so a repeat or a clear replaces the notification instead
//! of stacking. The exact command, for checking it by hand on a phone:
//!
//! ```text
//! su -c "cmd notification post -S bigtext -t 'sql: test alert' sovereign-sql-test 'it works'"
//! ```

use super::notice::Notice;
use super::SinkError;
use std::path::PathBuf;
use std::process::Command;

/// Android's notification command.
#[derive(Debug, Clone)]
pub struct Phone {
    cmd: PathBuf,
}

impl Phone {
    /// Posts through `cmd` (Android's `/system/bin/cmd`, or a stand-in in tests).
    pub fn new(cmd: PathBuf) -> Phone {
        Phone { cmd }
    }

    /// What logs call it.
    pub fn name(&self) -> String {
        format!(
            "phone notification ({} notification post)",
            self.cmd.display()
        )
    }

    /// The arguments after the program.
    pub fn args(n: &Notice) -> Vec<String> {
        vec![
            "notification".into(),
            "post".into(),
            "-S".into(),
            "bigtext".into(),
            "-t".into(),
            n.title(),
            n.tag(),
            n.message(),
        ]
    }

    /// Posts `n`.
    pub fn send(&self, n: &Notice) -> Result<(), SinkError> {
        let out = Command::new(&self.cmd)
            .args(Self::args(n))
            .output()
            .map_err(|e| SinkError::Refused {
                sink: self.name(),
                why: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SinkError::Refused {
                sink: self.name(),
                why: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::notice::NoticeKind;
    use super::*;
    use protocol::alerts::{Condition, Severity};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_stand_in_cmd_gets_androids_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = dir.path().join("cmd");
        let record = dir.path().join("argv");
        std::fs::write(
            &cmd,
            format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n", record.display()),
        )
        .unwrap();
        std::fs::set_permissions(&cmd, std::fs::Permissions::from_mode(0o755)).unwrap();
        let n = Notice {
            kind: NoticeKind::Raised,
            vm: "sql".into(),
            condition: Condition::DataDiskFull,
            severity: Severity::Warning,
            summary: "data disk 84% used".into(),
            since_unix: 5,
            at_unix: 5,
        };
        Phone::new(cmd.clone()).send(&n).unwrap();
        let argv = std::fs::read_to_string(&record).unwrap();
        assert_eq!(
            argv,
            "notification\npost\n-S\nbigtext\n-t\nsql: data-disk-full (warning)\nsovereign-sql-data-disk-full\ndata disk 84% used\n"
        );
        std::fs::write(&cmd, "#!/bin/sh\necho 'no service' >&2\nexit 3\n").unwrap();
        let e = Phone::new(cmd).send(&n).unwrap_err().to_string();
        assert!(e.contains("no service"), "{e}");
    }
}
