//! SQL the host asks the guest to run (`sovereign query`), as the `postgres` superuser
//! over the unix socket. The statements go to psql's stdin (never its argv, where any
//! process could read them), and the answer is capped so that it fits one control frame.

use super::{find_bin_dir, Account, PgError};
use crate::command;
use protocol::messages::QueryResult;
use std::path::Path;

/// Most bytes of psql's output kept for the host; more is read, dropped and flagged.
pub const MAX_OUTPUT: usize = 48 * 1024;

/// Runs `sql` and returns what psql printed (unaligned, tuples only).
pub fn run(id: u64, sql: &str, port: u16) -> QueryResult {
    let fail = |output: String| QueryResult {
        id,
        ok: false,
        output,
        truncated: false,
    };
    let Some(bin) = find_bin_dir(Path::new("/")) else {
        return fail(PgError::NotInstalled.to_string());
    };
    let Ok(account) = Account::lookup() else {
        return fail(PgError::NoUser.to_string());
    };
    let mut cmd = account.psql(&bin, port, &["-A", "-t", "-f", "-"]);
    match command::output_with_input(&mut cmd, sql.as_bytes(), MAX_OUTPUT) {
        Ok(o) if o.exit.success() => QueryResult {
            id,
            ok: true,
            output: o.stdout,
            truncated: o.truncated,
        },
        Ok(o) => QueryResult {
            truncated: o.truncated,
            ..fail(
                format!(
                    "{}{}",
                    o.stderr.trim(),
                    if o.stdout.is_empty() { "" } else { "\n" }
                ) + o.stdout.trim(),
            )
        },
        Err(e) => fail(e.to_string()),
    }
}
