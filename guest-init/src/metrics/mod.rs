//! PID 1's Prometheus page (`[metrics]` in the spec): `GET /metrics` on the port the
//! host names, answered on a thread of its own. Each scrape reads PostgreSQL (two psql
//! runs, [`protocol::metrics`]) and the guest's own status; nothing is kept between
//! scrapes.
//! The server listens on every address and the packet policy
//! ([`crate::net::firewall`]) lets only the tailnet interface reach it.

pub mod page;
pub mod text;

use crate::guest::Guest;
use protocol::GuestConfig;
use std::sync::Arc;
use tiny_http::{Header, Method, Response, Server};

/// Starts serving the page on `port` (both address families when the kernel has IPv6).
/// A port that cannot be bound is logged and leaves everything else as it is.
pub fn spawn(guest: Arc<Guest>, port: u16) {
    let server = match Server::http(("::", port)).or_else(|_| Server::http(("0.0.0.0", port))) {
        Ok(s) => s,
        Err(e) => {
            log::error!("metrics: cannot listen on port {port}: {e}; no Prometheus page");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(&server, &guest));
    match spawned {
        Ok(_) => log::info!("metrics: Prometheus page on port {port} (tailnet only)"),
        Err(e) => log::error!("metrics: cannot start its thread: {e}"),
    }
}

fn serve(server: &Server, guest: &Guest) {
    for request in server.incoming_requests() {
        let answer = match (request.method(), request.url()) {
            (Method::Get, "/metrics") => typed(scrape(guest), text::CONTENT_TYPE),
            (Method::Get, "/") => typed(
                "sovereign-init: see /metrics\n".into(),
                "text/plain; charset=utf-8",
            ),
            (Method::Get, _) => Response::from_string("not found\n").with_status_code(404),
            _ => Response::from_string("only GET\n").with_status_code(405),
        };
        if let Err(e) = request.respond(answer) {
            log::debug!("metrics: answering a scrape: {e}");
        }
    }
}

/// `body` with its `Content-Type` (the types are constants; one that would not parse
/// leaves the header out rather than the page).
fn typed(body: String, content_type: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut r = Response::from_string(body);
    if let Ok(h) = Header::from_bytes("Content-Type", content_type) {
        r.add_header(h);
    }
    r
}

/// One page: the status, one psql run, the supervisor's alerts.
fn scrape(guest: &Guest) -> String {
    let status = guest.status();
    let config = guest.config.get();
    let pg = match config {
        Some(c) => read_postgres(c),
        None => Err("no configuration yet".into()),
    };
    let alerts = guest.alerts();
    page::render(&page::Inputs {
        status: &status,
        pg,
        alerts: alerts.as_deref(),
        backup_schedule_secs: config.and_then(|c| c.backup.as_deref()).map(|b| {
            let days = protocol::backup::schedule_gap_days(b.full_every_days, b.diff_every_days);
            u64::from(days) * 86_400
        }),
    })
}

/// The server's figures, then each database's dead rows (a second psql run, connected
/// to each database the first one listed).
fn read_postgres(config: &GuestConfig) -> Result<page::PgScrape, String> {
    use protocol::metrics::{dead_tuples_script, parse_dead_tuples, parse_server, server_sql};
    let port = config.postgres.port;
    let answer = crate::postgres::query::run(0, &server_sql(), port);
    if !answer.ok {
        return Err(answer.output);
    }
    let server = parse_server(&answer.output).map_err(|e| e.to_string())?;
    let names = server.databases.iter().map(|d| d.datname.as_str());
    let dead = crate::postgres::query::run(0, &dead_tuples_script(names), port);
    let dead_tuples = if dead.ok {
        parse_dead_tuples(&dead.output)
    } else {
        log::debug!("metrics: dead rows not read: {}", dead.output);
        Vec::new()
    };
    Ok(page::PgScrape {
        server,
        dead_tuples,
    })
}
