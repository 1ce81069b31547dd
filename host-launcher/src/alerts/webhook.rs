//! The webhook sink: one HTTP POST per notice, in the form ntfy reads (a text body with
//! `Title`, `Priority` and `Tags` headers) or as JSON (what Gotify's `/message` reads).
//! Every notice also carries `X-Sovereign-*` headers naming the VM, the condition and its
//! state, for receivers that route on them. The URL is never logged whole (see
//! [`crate::spec::alerts::redact_url`]).

use super::notice::{Notice, NoticeKind};
use super::SinkError;
use crate::spec::alerts::{redact_url, WebhookFormat};
use std::time::Duration;

/// How long one POST may take, connection included.
const POST_TIMEOUT: Duration = Duration::from_secs(15);

/// A configured webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    format: WebhookFormat,
    token: Option<String>,
}

impl Webhook {
    /// A webhook at `url` (it may hold a secret), with an optional bearer token.
    pub fn new(url: &str, format: WebhookFormat, token: Option<String>) -> Webhook {
        Webhook {
            url: url.to_string(),
            format,
            token,
        }
    }

    /// What logs call it: the URL without its secret parts.
    pub fn name(&self) -> String {
        format!("webhook {}", redact_url(&self.url))
    }

    /// Sends `n`; the HTTP status on success.
    pub fn send(&self, n: &Notice) -> Result<u16, SinkError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(POST_TIMEOUT))
            .user_agent(concat!("sovereign/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut req = agent
            .post(&self.url)
            .header("X-Sovereign-Vm", &n.vm)
            .header("X-Sovereign-Condition", n.condition.name())
            .header("X-Sovereign-State", n.kind.to_string());
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let sent = match self.format {
            WebhookFormat::Text => req
                .header("Title", n.title())
                .header("Priority", n.ntfy_priority())
                .header("Tags", tags(n))
                .content_type("text/plain; charset=utf-8")
                .send(n.message()),
            WebhookFormat::Json => req.content_type("application/json").send(
                serde_json::json!({
                "title": n.title(),
                "message": n.message(),
                "priority": n.gotify_priority(),
                "vm": n.vm,
                "condition": n.condition,
                "state": n.kind.to_string(),
                "severity": n.severity,
                    "since_unix": n.since_unix,
                })
                .to_string(),
            ),
        };
        match sent {
            Ok(resp) => Ok(resp.status().as_u16()),
            // ureq's errors name the URL in some cases: say only what went wrong.
            Err(ureq::Error::StatusCode(code)) => Err(SinkError::Refused {
                sink: self.name(),
                why: format!("HTTP {code}"),
            }),
            Err(e) => Err(SinkError::Refused {
                sink: self.name(),
                why: scrub(&e.to_string(), &self.url),
            }),
        }
    }
}

/// ntfy's tags: an emoji by state and severity, and the condition.
fn tags(n: &Notice) -> String {
    let mark = match (n.kind, n.severity) {
        (NoticeKind::Cleared, _) => "white_check_mark",
        (NoticeKind::Test, _) => "bell",
        (_, protocol::alerts::Severity::Critical) => "rotating_light",
        (_, protocol::alerts::Severity::Warning) => "warning",
    };
    format!("{mark},{}", n.condition)
}

/// `text` with `url` (and its path) replaced by its redacted form.
fn scrub(text: &str, url: &str) -> String {
    text.replace(url, &redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::alerts::{Condition, Severity};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Serves one request on loopback: answers `status`, returns the request's head and
    /// body.
    fn serve_one(status: u16) -> (String, std::thread::JoinHandle<(String, String)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/topic-secret",
            l.local_addr().unwrap().port()
        );
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut s = s;
            write!(s, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        (url, h)
    }

    fn notice() -> Notice {
        Notice {
            kind: NoticeKind::Raised,
            vm: "sql".into(),
            condition: Condition::OffsiteRefused,
            severity: Severity::Critical,
            summary: "the off-device copy is refused".into(),
            since_unix: 1,
            at_unix: 1,
        }
    }

    #[test]
    fn a_text_notice_carries_title_priority_and_state_headers() {
        let (url, h) = serve_one(200);
        let w = Webhook::new(&url, WebhookFormat::Text, Some("tok".into()));
        assert_eq!(w.send(&notice()).unwrap(), 200);
        let (head, body) = h.join().unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("post /topic-secret "), "{head}");
        for h in [
            "title: sql: offsite-refused (critical)",
            "priority: urgent",
            "x-sovereign-state: raised",
            "x-sovereign-condition: offsite-refused",
            "authorization: bearer tok",
        ] {
            assert!(head.contains(h), "{h} in {head}");
        }
        assert_eq!(body, "the off-device copy is refused");
    }

    #[test]
    fn a_json_notice_is_what_gotify_reads_and_a_refusal_hides_the_url() {
        let (url, h) = serve_one(200);
        Webhook::new(&url, WebhookFormat::Json, None)
            .send(&notice())
            .unwrap();
        let (_, body) = h.join().unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["priority"], 9);
        assert_eq!(v["state"], "raised");
        assert_eq!(v["condition"], "offsite-refused");

        let (url, h) = serve_one(403);
        let e = Webhook::new(&url, WebhookFormat::Text, None)
            .send(&notice())
            .unwrap_err()
            .to_string();
        h.join().unwrap();
        assert!(e.contains("HTTP 403") && !e.contains("topic-secret"), "{e}");
        let dead = Webhook::new("http://127.0.0.1:9/topic-secret", WebhookFormat::Text, None);
        let e = dead.send(&notice()).unwrap_err().to_string();
        assert!(!e.contains("topic-secret"), "{e}");
    }
}
