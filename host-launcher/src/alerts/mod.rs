//! Alerts: the supervisor reads the VM's status at an interval, names the conditions
//! that hold ([`conditions`], [`replication`] when it has a peer), raises, repeats and clears them ([`tracker`]), and tells
//! the user through the spec's sinks ([`phone`], [`webhook`]) from a thread of their own
//! ([`dispatch`]); [`certificates`] watches the TLS certificates' expiry. `sovereign alerts
//! test` sends one notice through every sink.

pub mod certificates;
pub mod conditions;
pub mod dispatch;
pub mod notice;
pub mod phone;
pub mod replication;
pub mod tracker;
pub mod webhook;

use crate::paths::HostEnv;
use crate::spec::AlertsSpec;
use thiserror::Error;

/// Why a notice did not reach a sink, or a sink cannot be set up.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The sink answered with an error or could not be reached.
    #[error("{sink}: {why}")]
    Refused {
        /// Which sink (never with a secret).
        sink: String,
        /// What went wrong.
        why: String,
    },
    /// `[alerts] phone = true` but Android's `cmd` is not on this host.
    #[error("alerts.phone is on but there is no `cmd` program on this host (Android's /system/bin/cmd posts the notification); set phone = false off a phone")]
    NoCmd,
    /// The webhook's token file cannot be read.
    #[error("alerts.webhook_token_file {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A place alerts go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// An HTTP POST.
    Webhook(webhook::Webhook),
    /// A notification on the phone.
    Phone(phone::Phone),
}

impl Sink {
    /// What logs call it (no secrets).
    pub fn name(&self) -> String {
        match self {
            Sink::Webhook(w) => w.name(),
            Sink::Phone(p) => p.name(),
        }
    }

    /// Sends one notice; what the sink answered.
    pub fn send(&self, n: &notice::Notice) -> Result<String, SinkError> {
        match self {
            Sink::Webhook(w) => w.send(n).map(|code| format!("HTTP {code}")),
            Sink::Phone(p) => p.send(n).map(|()| "posted".to_string()),
        }
    }
}

/// The sinks `spec` names, set up on this host.
pub fn sinks(spec: &AlertsSpec, env: &HostEnv) -> Result<Vec<Sink>, SinkError> {
    let mut out = Vec::new();
    if spec.phone {
        let cmd = env.find_tool("cmd").ok_or(SinkError::NoCmd)?;
        out.push(Sink::Phone(phone::Phone::new(cmd)));
    }
    if let Some(url) = &spec.webhook {
        let token = crate::spec::alerts::read_token(spec.webhook_token_file.as_deref()).map_err(
            |source| SinkError::Token {
                path: spec
                    .webhook_token_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source,
            },
        )?;
        out.push(Sink::Webhook(webhook::Webhook::new(
            url,
            spec.webhook_format,
            token,
        )));
    }
    Ok(out)
}
