//! Connection strings for an app's database, in the forms apps take them: a URI
//! (Vaultwarden's `DATABASE_URL`, Forgejo), libpq key/value pairs (psql), JDBC, and
//! shell `PG*` variables. The host is the VM's tailnet name, never an address, so the
//! string keeps working when the tailnet renumbers.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What to connect to, as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The VM's tailnet name.
    pub host: &'a str,
    /// PostgreSQL's port.
    pub port: u16,
    /// The database (the app's name).
    pub dbname: &'a str,
    /// The role (the app's name).
    pub user: &'a str,
    /// The role's password.
    pub password: &'a str,
    /// With `Some(path)`: require TLS and verify the server against the CA certificate
    /// at `path` on the client's machine (`sslmode=verify-full`).
    pub verify_with_ca: Option<&'a str>,
}

/// The forms `db url` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `postgresql://user:password@host:port/db`.
    Uri,
    /// `host=... port=... dbname=... user=... password=...` (libpq, psql).
    Keyvalue,
    /// `jdbc:postgresql://host:port/db?user=...&password=...`.
    Jdbc,
    /// `PGHOST=...` lines for a shell or an env file.
    Env,
}

/// RFC 3986's unreserved characters stay; everything else in a user or password is
/// percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn pct(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A libpq value: single-quoted, with `\` and `'` escaped by a backslash.
fn libpq_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A value for a POSIX shell.
fn shell_quote(s: &str) -> String {
    shlex::try_quote(s).map_or_else(
        |_| format!("'{}'", s.replace('\'', "'\\''")),
        |q| q.into_owned(),
    )
}

/// The connection string for `t` in `format`.
pub fn render(t: &Target<'_>, format: Format) -> String {
    let mut s = render_plain(t, format);
    if let Some(ca) = t.verify_with_ca {
        s.push_str(&match format {
            Format::Uri => format!("?sslmode=verify-full&sslrootcert={}", pct(ca)),
            Format::Keyvalue => format!(" sslmode=verify-full sslrootcert={}", libpq_quote(ca)),
            Format::Jdbc => format!("&sslmode=verify-full&sslrootcert={}", pct(ca)),
            Format::Env => format!("\nPGSSLMODE=verify-full\nPGSSLROOTCERT={}", shell_quote(ca)),
        });
    }
    s
}

fn render_plain(t: &Target<'_>, format: Format) -> String {
    match format {
        Format::Uri => format!(
            "postgresql://{}:{}@{}:{}/{}",
            pct(t.user),
            pct(t.password),
            t.host,
            t.port,
            pct(t.dbname)
        ),
        Format::Keyvalue => format!(
            "host={} port={} dbname={} user={} password={}",
            t.host,
            t.port,
            libpq_quote(t.dbname),
            libpq_quote(t.user),
            libpq_quote(t.password)
        ),
        Format::Jdbc => format!(
            "jdbc:postgresql://{}:{}/{}?user={}&password={}",
            t.host,
            t.port,
            pct(t.dbname),
            pct(t.user),
            pct(t.password)
        ),
        Format::Env => format!(
            "PGHOST={}\nPGPORT={}\nPGDATABASE={}\nPGUSER={}\nPGPASSWORD={}",
            shell_quote(t.host),
            t.port,
            shell_quote(t.dbname),
            shell_quote(t.user),
            shell_quote(t.password)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ODD: &str = r#"p@ss w:rd/'"\%&?#=$`!"#;

    fn target(password: &str) -> Target<'_> {
        Target {
            host: "sql-vm",
            port: 5432,
            dbname: "forgejo",
            user: "forgejo",
            password,
            verify_with_ca: None,
        }
    }

    #[test]
    fn verify_full_names_the_ca_in_every_form() {
        let t = Target {
            verify_with_ca: Some("/etc/ssl/sql ca.crt"),
            ..target("pw")
        };
        assert_eq!(
            render(&t, Format::Uri),
            "postgresql://forgejo:pw@sql-vm:5432/forgejo?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Fsql%20ca.crt"
        );
        assert!(render(&t, Format::Keyvalue)
            .ends_with(" sslmode=verify-full sslrootcert='/etc/ssl/sql ca.crt'"));
        assert!(render(&t, Format::Jdbc)
            .ends_with("&sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Fsql%20ca.crt"));
        assert!(render(&t, Format::Env)
            .ends_with("\nPGSSLMODE=verify-full\nPGSSLROOTCERT='/etc/ssl/sql ca.crt'"));
    }

    #[test]
    fn a_uri_percent_encodes_the_password() {
        let uri = render(&target(ODD), Format::Uri);
        assert_eq!(
            uri,
            "postgresql://forgejo:p%40ss%20w%3Ard%2F%27%22%5C%25%26%3F%23%3D%24%60%21@sql-vm:5432/forgejo"
        );
        let encoded = uri
            .strip_prefix("postgresql://forgejo:")
            .and_then(|r| r.split_once("@sql-vm"))
            .map(|(p, _)| p)
            .unwrap();
        let back = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .unwrap();
        assert_eq!(back, ODD);
    }

    #[test]
    fn keyvalue_quotes_for_libpq() {
        assert_eq!(
            render(&target(ODD), Format::Keyvalue),
            r#"host=sql-vm port=5432 dbname='forgejo' user='forgejo' password='p@ss w:rd/\'"\\%&?#=$`!'"#
        );
    }

    #[test]
    fn jdbc_carries_the_credentials_as_encoded_parameters() {
        let jdbc = render(&target("a&b=c"), Format::Jdbc);
        assert_eq!(
            jdbc,
            "jdbc:postgresql://sql-vm:5432/forgejo?user=forgejo&password=a%26b%3Dc"
        );
    }

    #[test]
    fn env_lines_survive_a_shell() {
        let env = render(&target(ODD), Format::Env);
        let script = format!("{env}\nprintf '%s' \"$PGPASSWORD\"");
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), ODD);
        assert!(env.starts_with("PGHOST=sql-vm\nPGPORT=5432\n"), "{env}");
    }
}
