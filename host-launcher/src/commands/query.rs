//! `sovereign query`: runs SQL in the guest as the postgres superuser, through the
//! supervisor and the control channel (psql in the guest, unaligned, tuples only).

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;

/// Runs one query; `Ok(Ok(output))` when psql succeeded, `Ok(Err(text))` when it or the
/// channel failed.
pub async fn query(spec: &Spec, sql: &str) -> anyhow::Result<Result<String, String>> {
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
            Reply::QueryResult(r) if r.ok => Ok(r.output),
            Reply::QueryResult(r) => Err(r.output),
            Reply::Error { message } => Err(message),
            other => Err(format!("unexpected answer {other:?}")),
        },
    )
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
