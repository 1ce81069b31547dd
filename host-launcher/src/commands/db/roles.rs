//! `db add` and `db password --rotate`: an app's role changed on a running VM, with
//! the spec file and the secrets directory kept in step. Passwords reach the server as
//! SCRAM verifiers ([`protocol::provision`]), and a rotation is proven by reading back
//! the verifier the server holds before the new password replaces the old one's file.

use crate::commands::query::query;
use crate::paths::HostEnv;
use crate::secrets;
use crate::spec::{AppSpec, Spec};
use protocol::config::AppDatabase;
use protocol::{provision, scram};
use rand::RngCore;
use std::path::{Path, PathBuf};

/// `db add APP [--connection-limit N]`: adds `[[apps]]` to the spec file, makes the
/// app's password, and provisions its role and database now when the VM runs (else at
/// its next start).
pub async fn add(
    spec_file: Option<&Path>,
    env: &HostEnv,
    app: &str,
    connection_limit: Option<u32>,
) -> anyhow::Result<i32> {
    let Some(path) = spec_file else {
        anyhow::bail!(
            "the built-in VM provisions {}; to add an app, write its spec to a file and use that from now on:\n  sovereign spec > sql.toml\n  sovereign db add {app} --spec sql.toml",
            crate::spec::BUILTIN_APPS.join(" and ")
        );
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read VM spec {}: {e}", path.display()))?;
    let before = Spec::load(path, env)?;
    if before.apps.iter().any(|a| a.name == app) {
        anyhow::bail!(
            "app {app} is already in {} (its connection string: sovereign db url {app} --spec {})",
            path.display(),
            path.display()
        );
    }
    let new_text = crate::spec::with_app_added(&text, app, connection_limit);
    let dir = path.parent().unwrap_or(Path::new("."));
    let after = Spec::parse(&new_text, dir, env, &path.display().to_string())?;
    let problems: Vec<String> = crate::spec::validate::validate(&after, env)
        .into_iter()
        .filter(|p| p.field.starts_with("apps."))
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        anyhow::bail!(
            "app {app:?} cannot be added (the spec is unchanged):\n  {}",
            problems.join("\n  ")
        );
    }
    let Some(added) = after.apps.iter().find(|a| a.name == app) else {
        anyhow::bail!("app {app} did not appear in the spec it was added to");
    };
    secrets::ensure_password_file(&added.password_file)?;
    write_atomically(path, &new_text)?;
    println!(
        "added app {app} to {} (password in {})",
        path.display(),
        added.password_file.display()
    );
    if crate::commands::connect(&after).await.is_none() {
        println!(
            "VM {} is not running: its next start makes the role and database",
            after.name
        );
        return Ok(0);
    }
    let database = app_database(added, &added.password_file)?;
    match query(&after, &provision::app_sql(&database, &salt())).await? {
        Ok(_) => {
            println!(
                "role and database {app} made on the running VM; its connection string: sovereign db url {app} --spec {}",
                path.display()
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "making role {app} on the running VM failed: {e}\n(the spec names it now, so the next start makes it)"
            );
            Ok(1)
        }
    }
}

/// `db password APP --rotate`: a new password for the app's role. On a running VM the
/// server gets it first and the old password's file is replaced only once the server
/// is seen to hold the new one; a rotation cut short is finished by the next one.
pub async fn rotate(spec: &Spec, app: &str) -> anyhow::Result<i32> {
    let Some(a) = spec.apps.iter().find(|a| a.name == app) else {
        let names: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
        anyhow::bail!(
            "app {app:?} is not in the spec of VM {} (its apps: {})",
            spec.name,
            names.join(", ")
        );
    };
    let pending = pending_file(&a.password_file);
    let running = crate::commands::connect(spec).await.is_some();
    if pending.exists() && running && server_holds(spec, app, &pending).await? {
        promote(&pending, &a.password_file)?;
        println!("finished an earlier rotation of {app}'s password: the server already held it");
        return Ok(0);
    }
    if pending.exists() {
        std::fs::remove_file(&pending)
            .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", pending.display()))?;
    }
    secrets::ensure_password_file(&pending)?;
    if !running {
        promote(&pending, &a.password_file)?;
        println!(
            "new password for {app} in {}; VM {} is not running, so its next start sets it",
            a.password_file.display(),
            spec.name
        );
        return Ok(0);
    }
    let database = app_database(a, &pending)?;
    if let Err(e) = query(spec, &provision::app_sql(&database, &salt())).await? {
        std::fs::remove_file(&pending).ok();
        eprintln!(
            "the server did not take the new password for {app}: {e}\n(the old one still works)"
        );
        return Ok(1);
    }
    if !server_holds(spec, app, &pending).await? {
        eprintln!(
            "the server does not hold the new password for {app} after setting it; the new one is kept in {} and the next `db password {app} --rotate` finishes or redoes it",
            pending.display()
        );
        return Ok(1);
    }
    promote(&pending, &a.password_file)?;
    println!(
        "rotated {app}'s password (in {}); sessions already open stay, new ones need it: give the app `sovereign db url {app}`",
        a.password_file.display()
    );
    Ok(0)
}

/// Where a rotation keeps the new password until the server is seen to hold it.
fn pending_file(password_file: &Path) -> PathBuf {
    let mut name = password_file.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// True when the verifier the server holds for `app` is that of the password in `file`.
async fn server_holds(spec: &Spec, app: &str, file: &Path) -> anyhow::Result<bool> {
    let password = secrets::read_secret(file)?;
    match query(spec, &provision::stored_verifier_sql(app)).await? {
        Ok(stored) => Ok(scram::matches(stored.trim(), password.expose())),
        Err(e) => anyhow::bail!("cannot read {app}'s verifier back from the server: {e}"),
    }
}

fn promote(pending: &Path, password_file: &Path) -> anyhow::Result<()> {
    std::fs::rename(pending, password_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot move {} over {}: {e}",
            pending.display(),
            password_file.display()
        )
    })
}

fn app_database(app: &AppSpec, password_file: &Path) -> anyhow::Result<AppDatabase> {
    Ok(AppDatabase {
        name: app.name.clone(),
        password: secrets::read_secret(password_file)?,
        connection_limit: app.connection_limit,
    })
}

fn salt() -> [u8; 16] {
    let mut s = [0u8; 16];
    rand::rng().fill_bytes(&mut s);
    s
}

/// Replaces `path` with `text` through a temporary file in the same directory, keeping
/// the file's permission bits, so a crash leaves the old spec or the new one.
pub(crate) fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = pending_file(path);
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", tmp.display());
    let mode = std::fs::metadata(path).map_err(fail)?.permissions();
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.set_permissions(mode).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_password_sits_beside_the_file() {
        assert_eq!(
            pending_file(Path::new("/s/sql-app-forgejo.password")),
            PathBuf::from("/s/sql-app-forgejo.password.new")
        );
    }

    #[test]
    fn a_spec_is_replaced_whole_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sql.toml");
        std::fs::write(&p, "name = \"sql\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, "name = \"sql\"\n\n[[apps]]\nname = \"x\"\n").unwrap();
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .ends_with("name = \"x\"\n"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!pending_file(&p).exists());
    }
}
