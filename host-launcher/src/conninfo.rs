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
    /// A cluster: the other VMs' tailnet names, tried after `host` in this order, and
    /// which server the client wants.
    pub cluster: Option<(&'a [String], Session)>,
}

/// Which server of a cluster a client wants (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// Whichever takes writes: the primary, wherever it is after a promotion.
    ReadWrite,
    /// A replica when one answers, else the primary (read-only clients).
    PreferStandby,
}

impl Session {
    fn libpq(self) -> &'static str {
        match self {
            Session::ReadWrite => "read-write",
            Session::PreferStandby => "prefer-standby",
        }
    }

    fn jdbc(self) -> &'static str {
        match self {
            Session::ReadWrite => "primary",
            Session::PreferStandby => "preferSecondary",
        }
    }
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
    let mut first_uri_parameter = true;
    let mut uri_parameter = |s: &mut String, p: String| {
        s.push(if first_uri_parameter { '?' } else { '&' });
        first_uri_parameter = false;
        s.push_str(&p);
    };
    if let Some((_, session)) = t.cluster {
        match format {
            Format::Uri => {
                uri_parameter(&mut s, format!("target_session_attrs={}", session.libpq()))
            }
            Format::Keyvalue => s.push_str(&format!(" target_session_attrs={}", session.libpq())),
            Format::Jdbc => s.push_str(&format!("&targetServerType={}", session.jdbc())),
            Format::Env => s.push_str(&format!("\nPGTARGETSESSIONATTRS={}", session.libpq())),
        }
    }
    if let Some(ca) = t.verify_with_ca {
        match format {
            Format::Uri => uri_parameter(
                &mut s,
                format!("sslmode=verify-full&sslrootcert={}", pct(ca)),
            ),
            Format::Keyvalue => s.push_str(&format!(
                " sslmode=verify-full sslrootcert={}",
                libpq_quote(ca)
            )),
            Format::Jdbc => s.push_str(&format!("&sslmode=verify-full&sslrootcert={}", pct(ca))),
            Format::Env => s.push_str(&format!(
                "\nPGSSLMODE=verify-full\nPGSSLROOTCERT={}",
                shell_quote(ca)
            )),
        }
    }
    s
}

/// `host:port` of every server, comma-separated (URI and JDBC forms).
fn host_ports(t: &Target<'_>) -> String {
    hosts(t)
        .iter()
        .map(|h| format!("{h}:{}", t.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// The hosts and the ports as libpq's two parallel lists.
fn host_and_port_lists(t: &Target<'_>) -> (String, String) {
    let hosts = hosts(t);
    (
        hosts.join(","),
        vec![t.port.to_string(); hosts.len()].join(","),
    )
}

/// `host`, then the cluster's other hosts.
fn hosts<'a>(t: &Target<'a>) -> Vec<&'a str> {
    let mut v = vec![t.host];
    if let Some((others, _)) = t.cluster {
        v.extend(others.iter().map(String::as_str));
    }
    v
}

fn render_plain(t: &Target<'_>, format: Format) -> String {
    let (hosts, ports) = host_and_port_lists(t);
    match format {
        Format::Uri => format!(
            "postgresql://{}:{}@{}/{}",
            pct(t.user),
            pct(t.password),
            host_ports(t),
            pct(t.dbname)
        ),
        Format::Keyvalue => format!(
            "host={} port={} dbname={} user={} password={}",
            hosts,
            ports,
            libpq_quote(t.dbname),
            libpq_quote(t.user),
            libpq_quote(t.password)
        ),
        Format::Jdbc => format!(
            "jdbc:postgresql://{}/{}?user={}&password={}",
            host_ports(t),
            pct(t.dbname),
            pct(t.user),
            pct(t.password)
        ),
        Format::Env => format!(
            "PGHOST={}\nPGPORT={}\nPGDATABASE={}\nPGUSER={}\nPGPASSWORD={}",
            shell_quote(&hosts),
            ports,
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
            cluster: None,
        }
    }

    #[test]
    fn a_cluster_lists_every_host_and_asks_for_the_primary() {
        let three = ["sql-r1".to_string(), "sql-r2".to_string()];
        let t = Target {
            cluster: Some((&three, Session::ReadWrite)),
            ..target("pw")
        };
        assert_eq!(
            render(&t, Format::Keyvalue),
            "host=sql-vm,sql-r1,sql-r2 port=5432,5432,5432 dbname='forgejo' user='forgejo' password='pw' target_session_attrs=read-write"
        );
        let other = ["sql-replica".to_string()];
        let t = Target {
            cluster: Some((&other, Session::ReadWrite)),
            verify_with_ca: Some("/ca.crt"),
            ..target("pw")
        };
        assert_eq!(
            render(&t, Format::Uri),
            "postgresql://forgejo:pw@sql-vm:5432,sql-replica:5432/forgejo?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=%2Fca.crt"
        );
        assert_eq!(
            render(&t, Format::Keyvalue),
            "host=sql-vm,sql-replica port=5432,5432 dbname='forgejo' user='forgejo' password='pw' target_session_attrs=read-write sslmode=verify-full sslrootcert='/ca.crt'"
        );
        assert!(render(&t, Format::Jdbc).starts_with(
            "jdbc:postgresql://sql-vm:5432,sql-replica:5432/forgejo?user=forgejo&password=pw&targetServerType=primary&"
        ));
        let env = render(&t, Format::Env);
        assert!(
            env.contains("PGHOST='sql-vm,sql-replica'\nPGPORT=5432,5432\n"),
            "{env}"
        );
        assert!(env.contains("\nPGTARGETSESSIONATTRS=read-write"), "{env}");
        let vm = ["sql-vm".to_string()];
        let reads = Target {
            cluster: Some((&vm, Session::PreferStandby)),
            verify_with_ca: None,
            ..target("pw")
        };
        assert!(render(&reads, Format::Keyvalue).ends_with(" target_session_attrs=prefer-standby"));
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
