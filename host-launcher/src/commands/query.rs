//! `sovereign query`: SQL as the postgres superuser inside the guest, through the
//! supervisor and the control channel (the statements on stdin stay out of every
//! process list); also how other verbs ask the server a question.

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;
use thiserror::Error;

/// Why a query the supervisor took produced no output. Each text is what the user sees
/// after `query failed: ` (psql's own message, or the supervisor's).
#[derive(Debug, Error)]
pub enum QueryError {
    #[error("{0}")]
    Psql(String),
    #[error("{0}")]
    NotRelayed(String),
    #[error("unexpected answer {0:?}")]
    UnexpectedAnswer(Box<Reply>),
}

/// Runs one query; `Ok(Ok(output))` when psql succeeded, `Ok(Err(_))` when it or the
/// channel failed, `Err` when the supervisor cannot be reached.
pub async fn query(spec: &Spec, sql: &str) -> anyhow::Result<Result<String, QueryError>> {
    let spec = super::running_spec(spec);
    Ok(
        match call(
            &spec,
            &Request::Query {
                sql: sql.to_string(),
            },
        )
        .await?
        {
            Reply::QueryResult(r) if r.ok => {
                if r.truncated {
                    eprintln!(
                        "(output truncated: the guest sends at most {} KiB per answer)",
                        protocol::control::MAX_CONTROL_FRAME / 1024
                    );
                }
                Ok(r.output)
            }
            Reply::QueryResult(r) => Err(QueryError::Psql(r.output)),
            Reply::Error { message } => Err(QueryError::NotRelayed(message)),
            other => Err(QueryError::UnexpectedAnswer(Box::new(other))),
        },
    )
}

/// The most SQL one request can carry (the control frame is 64 KiB, JSON included).
pub const MAX_SQL: usize = 60 * 1024;

/// Reads the statements for `query` from stdin, refusing more than [`MAX_SQL`].
pub fn read_stdin() -> anyhow::Result<String> {
    use std::io::Read;
    let mut sql = String::new();
    std::io::stdin()
        .take(u64::try_from(MAX_SQL).unwrap_or(u64::MAX) + 1)
        .read_to_string(&mut sql)
        .map_err(|e| anyhow::anyhow!("cannot read SQL from stdin: {e}"))?;
    if sql.len() > MAX_SQL {
        anyhow::bail!(
            "the SQL on stdin is over {} KiB, more than one request carries: split it",
            MAX_SQL / 1024
        );
    }
    if sql.trim().is_empty() {
        anyhow::bail!("no SQL: give it as an argument or on stdin");
    }
    Ok(sql)
}

/// Runs `query`: prints the output; exit 1 when the query failed.
pub async fn run(spec: &Spec, sql: &str) -> anyhow::Result<i32> {
    match query(spec, sql).await? {
        Ok(out) => {
            print!("{out}");
            if !out.is_empty() && !out.ends_with('\n') {
                println!();
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("query failed: {e}");
            Ok(1)
        }
    }
}
