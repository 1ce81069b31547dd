//! The `postgres` account every server and client program of the guest runs as, and
//! how a client program reaches the server as the superuser (the unix socket, peer
//! authentication: no password involved).

use super::config::SOCKET_DIR;
use super::PgError;
use crate::owned_files::Owner;
use nix::unistd::User;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Which `postgres` account to run as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Account {
    owner: Owner,
}

impl Account {
    /// Its uid and gid.
    pub(crate) fn owner(&self) -> Owner {
        self.owner
    }

    pub(crate) fn lookup() -> Result<Account, PgError> {
        let user = User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or(PgError::NoUser)?;
        Ok(Account {
            owner: Owner {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            },
        })
    }

    /// A command that runs as postgres, with a clean environment.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.uid(self.owner.uid)
            .gid(self.owner.gid)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/var/lib/postgresql")
            .env("LANG", "C.UTF-8");
        c
    }

    /// psql as the superuser over the unix socket, stopping at the first error.
    pub(crate) fn psql(&self, bin: &Path, port: u16, extra: &[&str]) -> Command {
        let mut c = self.command(bin.join("psql"));
        c.args(["-X", "-v", "ON_ERROR_STOP=1"])
            .args(superuser_over_socket(port))
            .args(["-d", "postgres"]);
        c.args(extra);
        c
    }
}

/// The connection options every client program shares: the superuser over the unix
/// socket at `port` (the database is named per program: `-d` for most, a positional
/// argument for pgbench, whose `-d` means debug).
pub(crate) fn superuser_over_socket(port: u16) -> [String; 6] {
    role_over_socket(port, "postgres")
}

/// Connection arguments for `role` over the unix socket, from the `postgres` account
/// (pg_ident.conf maps it to any role: it is the superuser already, and a role's own
/// session is how work runs with that role's rights and no more).
pub(crate) fn role_over_socket(port: u16, role: &str) -> [String; 6] {
    [
        "-h".into(),
        SOCKET_DIR.into(),
        "-p".into(),
        port.to_string(),
        "-U".into(),
        role.into(),
    ]
}
