//! `sovereign query`, `probe` and `logs`: run SQL as the postgres superuser, run a
//! network check, or read a log, inside the guest, through the supervisor and the
//! control channel.

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;
use protocol::messages::{GuestLog, GuestService, Probe, ServiceSignal};
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

/// Runs `signal`: asks PID 1 to signal a service; exit 1 when it could not.
pub async fn signal(
    spec: &Spec,
    service: GuestService,
    signal: ServiceSignal,
) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    match call(&spec, &Request::SignalService { service, signal }).await? {
        Reply::SignalResult(r) if r.ok => {
            println!("{}", r.output);
            Ok(0)
        }
        Reply::SignalResult(r) => {
            eprintln!("signal failed: {}", r.output);
            Ok(1)
        }
        Reply::Error { message } => {
            eprintln!("signal failed: {message}");
            Ok(1)
        }
        other => {
            eprintln!("unexpected answer {other:?}");
            Ok(1)
        }
    }
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

/// Runs `probe`: prints the guest's answer; exit 1 when the check failed.
pub async fn probe(spec: &Spec, probe: &Probe) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    let reply = call(
        &spec,
        &Request::Probe {
            probe: probe.clone(),
        },
    )
    .await?;
    let (ok, text) = match reply {
        Reply::ProbeResult(r) => (r.ok, r.output),
        Reply::Error { message } => (false, message),
        other => (false, format!("unexpected answer {other:?}")),
    };
    if ok {
        println!("{}", text.trim_end());
        Ok(0)
    } else {
        eprintln!("probe failed: {text}");
        Ok(1)
    }
}

/// Runs `logs`: prints the end of the guest's log; exit 1 when it could not be read.
pub async fn logs(spec: &Spec, log: GuestLog) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    match call(&spec, &Request::ReadLog { log }).await? {
        Reply::LogContents(r) if r.ok => {
            print!("{}", r.output);
            Ok(0)
        }
        Reply::LogContents(r) => {
            eprintln!("cannot read the log: {}", r.output);
            Ok(1)
        }
        Reply::Error { message } => {
            eprintln!("cannot read the log: {message}");
            Ok(1)
        }
        other => {
            eprintln!("unexpected answer {other:?}");
            Ok(1)
        }
    }
}
