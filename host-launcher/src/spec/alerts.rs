//! The spec's `[alerts]` table: where the supervisor tells its user about a condition
//! (a notification on the phone, a webhook such as ntfy or Gotify), how often it checks,
//! and how often it repeats one that still holds.

use super::Problem;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Accepted check interval, seconds.
pub const CHECK_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// Accepted repeat interval, seconds (10 s for drills, up to a week).
pub const REPEAT_RANGE: std::ops::RangeInclusive<u64> = 10..=604_800;
/// Accepted replica lag before `replica-lagging`, seconds.
pub const REPLICA_LAG_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;

/// `[alerts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsFile {
    webhook: Option<String>,
    webhook_format: Option<WebhookFormat>,
    webhook_token_file: Option<PathBuf>,
    phone: Option<bool>,
    check_secs: Option<u64>,
    repeat_secs: Option<u64>,
    replica_lag_secs: Option<u64>,
}

/// How a webhook's body is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The message as the body, with `Title`, `Priority` and `Tags` headers: what ntfy
    /// reads (and any receiver that logs a body).
    #[default]
    Text,
    /// `{"title", "message", "priority", ...}`: what Gotify's `/message` reads.
    Json,
}

/// Where and how alerts go, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsSpec {
    /// The webhook's URL (it may carry a secret: a topic, a token), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// How its body is written.
    #[serde(default)]
    pub webhook_format: WebhookFormat,
    /// A file whose content is sent as `Authorization: Bearer ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_token_file: Option<PathBuf>,
    /// Post a notification on the phone itself (`cmd notification post`).
    #[serde(default)]
    pub phone: bool,
    /// How often the supervisor looks at the VM's status.
    pub check_secs: u64,
    /// How often a condition that still holds is said again.
    pub repeat_secs: u64,
    /// A replica further behind than this raises `replica-lagging`.
    #[serde(default = "default_replica_lag_secs")]
    pub replica_lag_secs: u64,
}

/// `replica_lag_secs` of a run spec written before the field existed, and the default.
fn default_replica_lag_secs() -> u64 {
    300
}

impl AlertsSpec {
    /// What a VM gets without an `[alerts]` table: a notification on the phone when it
    /// runs on one, checks every 30 s, a repeat every 6 hours.
    pub fn defaults(android: bool) -> AlertsSpec {
        AlertsSpec {
            webhook: None,
            webhook_format: WebhookFormat::Text,
            webhook_token_file: None,
            phone: android,
            check_secs: 30,
            repeat_secs: 6 * 3600,
            replica_lag_secs: default_replica_lag_secs(),
        }
    }

    /// True when some sink is configured.
    pub fn any_sink(&self) -> bool {
        self.phone || self.webhook.is_some()
    }

    /// What is wrong with it.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(url) = &self.webhook {
            if let Err(why) = check_webhook(url) {
                p.push(Problem::new("alerts.webhook", redact_url(url), why));
            }
        }
        if let Some(f) = &self.webhook_token_file {
            if !f.is_file() {
                p.push(Problem::new(
                    "alerts.webhook_token_file",
                    f.display(),
                    "does not exist (a file holding the webhook's token, mode 0600)",
                ));
            }
        }
        if !CHECK_RANGE.contains(&self.check_secs) {
            p.push(Problem::new(
                "alerts.check_secs",
                self.check_secs,
                format!("must be in {CHECK_RANGE:?}"),
            ));
        }
        if !REPLICA_LAG_RANGE.contains(&self.replica_lag_secs) {
            p.push(Problem::new(
                "alerts.replica_lag_secs",
                self.replica_lag_secs,
                format!("must be in {REPLICA_LAG_RANGE:?}"),
            ));
        }
        if !REPEAT_RANGE.contains(&self.repeat_secs) {
            p.push(Problem::new(
                "alerts.repeat_secs",
                self.repeat_secs,
                format!("must be in {REPEAT_RANGE:?}"),
            ));
        }
        p
    }
}

impl AlertsFile {
    /// Resolves paths (`in_dir`) and the defaults for this host.
    pub(super) fn resolve(self, in_dir: impl Fn(PathBuf) -> PathBuf, android: bool) -> AlertsSpec {
        let d = AlertsSpec::defaults(android);
        AlertsSpec {
            webhook: self.webhook.map(|w| w.trim().to_string()),
            webhook_format: self.webhook_format.unwrap_or(d.webhook_format),
            webhook_token_file: self.webhook_token_file.map(in_dir),
            phone: self.phone.unwrap_or(d.phone),
            check_secs: self.check_secs.unwrap_or(d.check_secs),
            repeat_secs: self.repeat_secs.unwrap_or(d.repeat_secs),
            replica_lag_secs: self.replica_lag_secs.unwrap_or(d.replica_lag_secs),
        }
    }
}

/// Why `url` cannot be a webhook: only `http://` and `https://` URLs with a host.
fn check_webhook(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(
            "must start with https:// (or http:// for a receiver on the tailnet or this host)",
        )?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        return Err("has no host".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds a space or a control character".into());
    }
    Ok(())
}

/// `url` with what may be secret cut away: user information, the path (an ntfy topic
/// is its password) and the query (a Gotify token) become `…`. What logs and errors
/// show of a webhook.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return "…".into(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let cut = rest.len() > authority.len() || authority.contains('@');
    format!("{scheme}://{host}{}", if cut { "/…" } else { "" })
}

/// The token file's content, trimmed; `None` when unset.
pub fn read_token(file: Option<&Path>) -> std::io::Result<Option<String>> {
    file.map(|f| std::fs::read_to_string(f).map(|t| t.trim().to_string()))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_a_webhook_url_never_show() {
        assert_eq!(
            redact_url("https://ntfy.sh/my-secret-topic"),
            "https://ntfy.sh/…"
        );
        assert_eq!(
            redact_url("https://gotify.example:8443/message?token=AbC"),
            "https://gotify.example:8443/…"
        );
        assert_eq!(redact_url("http://user:pw@host"), "http://host/…");
        assert_eq!(redact_url("http://127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(redact_url("not a url"), "…");
    }

    #[test]
    fn a_bad_webhook_is_named_without_its_secret() {
        let mut a = AlertsSpec::defaults(false);
        a.webhook = Some("ftp://host/secret-topic".into());
        a.repeat_secs = 1;
        let p = a.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].field, "alerts.webhook");
        assert!(!p[0].to_string().contains("secret-topic"), "{}", p[0]);
        assert_eq!(p[1].field, "alerts.repeat_secs");
        a.webhook = Some("https:///x".into());
        a.repeat_secs = 60;
        assert_eq!(a.problems()[0].why, "has no host");
        a.webhook = Some("https://ntfy.sh/topic".into());
        assert!(a.problems().is_empty());
    }

    #[test]
    fn the_phone_is_told_by_default_only_on_a_phone() {
        assert!(AlertsSpec::defaults(true).phone);
        assert!(!AlertsSpec::defaults(false).any_sink());
    }
}
