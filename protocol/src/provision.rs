//! The SQL that gives PostgreSQL its passwords and the apps their roles and databases.
//! The guest runs it at every boot; the launcher sends one app's part when it adds an
//! app or rotates a password on a running VM. Passwords go in as SCRAM verifiers, and
//! the session stops logging statements first, so that not even a verifier reaches the
//! server log under `log_statement = 'ddl'`.

use crate::config::{AppDatabase, Secret};
use crate::scram;

/// Turns statement logging off for this session (a superuser setting).
const QUIET: &str = "SET log_statement = 'none';\n";

/// Sets the superuser's password, and takes CONNECT on the maintenance and template
/// databases from PUBLIC: an app's role reaches its own database and no other (the
/// superuser needs no grant; the replication role is granted `postgres` by name).
pub fn superuser_sql(password: &Secret, salt: &[u8; 16]) -> String {
    format!(
        "{QUIET}ALTER ROLE postgres PASSWORD '{}';\n\
         REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;\n\
         REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;\n",
        scram::verifier(password.expose(), salt)
    )
}

/// Creates `app`'s role and database when missing, sets its password and connection
/// limit, and keeps every other role out of its database. Safe to run again. The
/// name must be a validated SQL identifier (see `GuestConfig::validate`); the text is
/// psql input (`\gexec`).
pub fn app_sql(app: &AppDatabase, salt: &[u8; 16]) -> String {
    let n = &app.name;
    format!(
        "{QUIET}SELECT 'CREATE ROLE {n} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{n}')\\gexec\n\
         ALTER ROLE {n} PASSWORD '{}' CONNECTION LIMIT {};\n\
         SELECT 'CREATE DATABASE {n} OWNER {n}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{n}')\\gexec\n\
         REVOKE ALL ON DATABASE {n} FROM PUBLIC;\n",
        scram::verifier(app.password.expose(), salt),
        app.connection_limit
    )
}

/// Reads back the verifier PostgreSQL holds for `role` (a validated identifier), one
/// line of psql's `-A -t` output, for [`scram::matches`].
pub fn stored_verifier_sql(role: &str) -> String {
    format!("select rolpassword from pg_authid where rolname = '{role}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_sql_creates_only_what_is_missing_and_never_holds_the_password() {
        let app = AppDatabase {
            name: "forgejo".into(),
            password: Secret::new("s3cret-password-here"),
            connection_limit: 7,
        };
        let sql = app_sql(&app, &[3; 16]);
        assert!(sql.starts_with("SET log_statement = 'none';\n"));
        assert!(!sql.contains("s3cret"));
        assert!(sql.contains("CONNECTION LIMIT 7;"));
        assert!(sql
            .contains("WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'forgejo')\\gexec"));
        assert!(sql.contains("REVOKE ALL ON DATABASE forgejo FROM PUBLIC;"));
        let stored = sql
            .split('\'')
            .find(|s| s.starts_with("SCRAM-SHA-256$"))
            .unwrap();
        assert!(scram::matches(stored, "s3cret-password-here"));
        let su = superuser_sql(&Secret::new("another-password"), &[4; 16]);
        assert!(su.starts_with(
            "SET log_statement = 'none';\nALTER ROLE postgres PASSWORD 'SCRAM-SHA-256$"
        ));
    }
}
