//! A webhook receiver for the alert drills: a real HTTP server (tiny_http) on loopback
//! that records every POST the supervisor makes, in order, with the headers that name
//! the condition and its state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One POST as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `X-Sovereign-Condition` (`offsite-refused`).
    pub condition: String,
    /// `X-Sovereign-State` (`raised`, `repeated`, `cleared`, `test`).
    pub state: String,
    /// `Title`.
    pub title: String,
    /// The body.
    pub body: String,
}

/// The running receiver; stops when dropped.
pub struct WebhookReceiver {
    /// Where to POST (`http://127.0.0.1:PORT/alerts-topic`).
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    server: Arc<tiny_http::Server>,
}

impl WebhookReceiver {
    /// Listens on a free loopback port.
    pub fn start() -> WebhookReceiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .expect("an IP listener");
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (server.clone(), got.clone());
        std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let header = |name: &'static str| {
                    req.headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.as_str().to_string())
                        .unwrap_or_default()
                };
                let (condition, state, title) = (
                    header("X-Sovereign-Condition"),
                    header("X-Sovereign-State"),
                    header("Title"),
                );
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                println!("--- webhook: {state} {condition}: {title}: {body}");
                g.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
                    condition,
                    state,
                    title,
                    body,
                });
                let _ = req.respond(tiny_http::Response::empty(200));
            }
        });
        WebhookReceiver {
            url: format!("http://127.0.0.1:{port}/alerts-topic"),
            got,
            server,
        }
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `within` for a POST about `condition` in `state`; its index in
    /// [`Self::received`].
    pub fn wait(&self, condition: &str, state: &str, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .received()
                .iter()
                .position(|r| r.condition == condition && r.state == state);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "webhook receiver at {}", self.url)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
