//! The `certificate-expiring` condition: the VM's CA (`secrets/<name>-ca.crt`) and the
//! server certificate handed to its current boot (`secrets/<name>-server.crt`), read
//! for their notAfter at every check. Clients that verify the server (`verify-full`)
//! stop connecting the moment either expires, so the user hears of it a month ahead.

use super::conditions::Found;
use protocol::alerts::{Condition, Severity};
use std::path::Path;
use x509_cert::der::DecodePem;

/// A certificate expiring within this many days warns.
pub const WARNING_DAYS: i64 = 30;
/// Within this many days (or expired) it is critical.
pub const CRITICAL_DAYS: i64 = 7;

/// The notAfter of the PEM certificate `pem`, in seconds since the epoch.
pub fn not_after_unix(pem: &str) -> Result<i64, String> {
    let cert = x509_cert::Certificate::from_pem(pem).map_err(|e| e.to_string())?;
    let t = cert.tbs_certificate.validity.not_after.to_unix_duration();
    i64::try_from(t.as_secs()).map_err(|e| e.to_string())
}

/// The condition for certificates named `what` with their notAfter, at `now`; the one
/// expiring first speaks for all.
pub fn evaluate(certs: &[(String, i64)], now: i64) -> Option<Found> {
    let (what, not_after) = certs.iter().min_by_key(|(_, t)| *t)?;
    let days = (not_after - now).div_euclid(86_400);
    let severity = match days {
        d if d < CRITICAL_DAYS => Severity::Critical,
        d if d < WARNING_DAYS => Severity::Warning,
        _ => return None,
    };
    let when = if *not_after <= now {
        "has expired".to_string()
    } else {
        format!("expires in {days} day(s)")
    };
    Some(Found::new(
        Condition::CertificateExpiring,
        severity,
        format!("{what} {when}: clients that verify it (verify-full) will refuse the server; a start issues a new server certificate, a new CA needs its files removed from secrets/ and clients given the new one"),
    ))
}

/// Reads the certificates at `files` (what each is, its path); an unreadable one is
/// logged and left out, never raised as expiring.
pub fn check(files: &[(&str, &Path)], now: i64) -> Option<Found> {
    let certs: Vec<(String, i64)> = files
        .iter()
        .filter_map(|(what, path)| {
            let pem = std::fs::read_to_string(path).ok()?;
            match not_after_unix(&pem) {
                Ok(t) => Some((format!("the {what} ({})", path.display()), t)),
                Err(e) => {
                    log::warn!("alerts: cannot read the expiry of {}: {e}", path.display());
                    None
                }
            }
        })
        .collect();
    evaluate(&certs, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn thirty_days_warn_seven_are_critical_and_the_first_to_expire_speaks() {
        let now = 1_000 * DAY;
        let certs = |server: i64| {
            vec![
                ("the CA".to_string(), now + 7000 * DAY),
                ("the server certificate".to_string(), now + server),
            ]
        };
        assert_eq!(evaluate(&certs(31 * DAY), now), None);
        let w = evaluate(&certs(29 * DAY + 5), now).unwrap();
        assert_eq!(
            (w.condition, w.severity),
            (Condition::CertificateExpiring, Severity::Warning)
        );
        assert!(
            w.summary
                .starts_with("the server certificate expires in 29 day(s)"),
            "{}",
            w.summary
        );
        let c = evaluate(&certs(6 * DAY), now).unwrap();
        assert_eq!(c.severity, Severity::Critical);
        let gone = evaluate(&certs(-DAY), now).unwrap();
        assert!(gone.summary.contains("has expired"), "{}", gone.summary);
        assert_eq!(evaluate(&[], now), None);
    }

    #[test]
    fn the_expiry_is_read_from_the_certificates_the_launcher_makes() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec =
            crate::spec::Spec::builtin_sql(&crate::spec::tests::env_in(dir.path(), false)).unwrap();
        spec.secrets_dir = dir.path().to_path_buf();
        let (server, _key) = crate::tls::server_certificate(&spec).unwrap();
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let days = (not_after_unix(&server).unwrap() - now) / DAY;
        assert!((396..=397).contains(&days), "{days}");
        let (_, ca) = crate::tls::ca_paths(&spec);
        let written = crate::tls::server_certificate_path(&spec);
        assert_eq!(std::fs::read_to_string(&written).unwrap(), server);
        assert_eq!(
            check(&[("CA", &ca), ("server certificate", &written)], now),
            None
        );
        // 370 days on, the server certificate of that boot is 26 days from its end.
        let later = check(
            &[("CA", &ca), ("server certificate", &written)],
            now + 370 * DAY,
        )
        .unwrap();
        assert!(
            later.summary.contains("server certificate"),
            "{}",
            later.summary
        );
        assert_eq!(later.severity, Severity::Warning);
        std::fs::write(&written, "not a certificate").unwrap();
        assert_eq!(
            check(&[("server certificate", &written)], now + 370 * DAY),
            None
        );
    }
}
