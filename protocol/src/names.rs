//! What a name or password in the configuration may be: hostnames (DNS labels), the
//! SQL identifiers the guest creates unquoted, app names (never one PostgreSQL or the
//! launcher already uses), passwords SCRAM can hash as PostgreSQL does.

/// True for a DNS label: 1–63 of `a-z0-9-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// True for a PostgreSQL identifier we are willing to create unquoted.
pub fn is_sql_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && s.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Why `name` cannot be an app's role and database, when it cannot: a name PostgreSQL
/// or the launcher already gives to something else (the superuser, the replication role
/// whose password and grants the launcher rewrites, PostgreSQL's own `pg_` roles and
/// template databases, the role names SQL reserves).
pub fn app_name_problem(name: &str) -> Option<&'static str> {
    if !is_sql_identifier(name) {
        Some("must be a lowercase SQL identifier (a-z, 0-9, '_'; not starting with a digit)")
    } else if name == "postgres" {
        Some("is the superuser's role and the maintenance database")
    } else if name == crate::replication::REPLICATION_ROLE {
        Some("is the replication role the launcher manages")
    } else if name.starts_with("pg_") {
        Some("PostgreSQL reserves role names starting with pg_")
    } else if name.starts_with("template") {
        Some("template0 and template1 are PostgreSQL's template databases; names starting with template are kept apart from them")
    } else if [
        "public",
        "none",
        "current_user",
        "current_role",
        "session_user",
    ]
    .contains(&name)
    {
        Some("is a role name SQL reserves")
    } else {
        None
    }
}

/// True for a password we accept: 8–128 printable ASCII characters (so SCRAM's SASLprep
/// step is the identity and the guest can hash it exactly as PostgreSQL would).
pub fn is_password(s: &str) -> bool {
    (8..=128).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}
