//! The credentials file a replica's host needs from the primary's: the replication
//! password, the cluster's superuser and app passwords (a replica is a copy of the
//! primary, so its roles and passwords are the primary's; after a promotion the same
//! connection strings keep working), and the cluster's CA, so every node's certificate
//! verifies with one CA file and `sslmode=verify-full` holds across a failover.
//! Written 0600 by `sovereign replica credentials`. Imported into the replica host's
//! own secret files when the node is being made a replica (its data disk does not
//! exist yet); after that only files that are missing, so a password rotated since
//! the file was written is never reverted.

use crate::secrets::{read_secret, write_private, SecretError};
use crate::spec::Spec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why credentials could not be written or read (never shows a value).
#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("the spec of VM {0} has no [replication] table: name the peer (replication.peer) and this VM's role first")]
    NoReplication(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("credentials file {path}: {why}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    /// The primary's tailnet name (for the reader; the spec names the peer).
    primary: String,
    replication_password: String,
    superuser_password: String,
    #[serde(default)]
    apps: BTreeMap<String, String>,
    /// The cluster's CA: whose it is (the name in its certificate), its key and its
    /// certificate, PEM.
    #[serde(default)]
    ca: Option<CaFile>,
}

/// The CA part of the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaFile {
    owner: String,
    key: String,
    certificate: String,
}

/// What [`import`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Secret files written from the credentials file.
    pub written: Vec<PathBuf>,
    /// Secret files left as they are although the credentials file holds another value
    /// (the node already has its data disk: a rotation since the file was written).
    pub kept: Vec<PathBuf>,
}

/// The credentials of `spec`'s cluster as TOML, from this host's secret files.
pub fn render(spec: &Spec) -> Result<String, CredentialsError> {
    let r = spec
        .replication
        .as_ref()
        .ok_or_else(|| CredentialsError::NoReplication(spec.name.clone()))?;
    let file = CredentialsFile {
        primary: spec.hostname.clone(),
        replication_password: read_secret(&r.password_file)?.expose().to_string(),
        superuser_password: read_secret(&spec.postgres.superuser_password_file)?
            .expose()
            .to_string(),
        apps: spec
            .apps
            .iter()
            .map(|a| {
                Ok((
                    a.name.clone(),
                    read_secret(&a.password_file)?.expose().to_string(),
                ))
            })
            .collect::<Result<_, SecretError>>()?,
        ca: Some(ca_of(spec)?),
    };
    let body = toml::to_string(&file).map_err(|e| CredentialsError::Bad {
        path: PathBuf::from("-"),
        why: e.to_string(),
    })?;
    Ok(format!(
        "# sovereign replica credentials of {} (keep it 0600; it holds the cluster's passwords and its CA's key)\n{body}",
        spec.hostname
    ))
}

/// Writes [`render`]'s text to `path`, mode 0600, replacing it.
pub fn write(spec: &Spec, path: &Path) -> Result<(), CredentialsError> {
    let text = render(spec)?;
    write_private(path, text.as_bytes()).map_err(|source| CredentialsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The cluster's CA as this host holds it (made on first use).
fn ca_of(spec: &Spec) -> Result<CaFile, CredentialsError> {
    crate::tls::ca_certificate(spec).map_err(|e| CredentialsError::Bad {
        path: crate::tls::ca_paths(spec).1,
        why: e.to_string(),
    })?;
    let (key, cert) = crate::tls::ca_paths(spec);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| CredentialsError::Bad {
            path: p.to_path_buf(),
            why: e.to_string(),
        })
    };
    Ok(CaFile {
        owner: crate::tls::ca_owner(spec),
        key: read(&key)?,
        certificate: read(&cert)?,
    })
}

/// On a host whose spec names a credentials file: makes this host's secret files
/// (replication, superuser, each app of the spec that the file has, the CA) hold its
/// values. All of them while the node is being made a replica (no data disk yet);
/// afterwards only those that are missing.
pub fn import(spec: &Spec) -> Result<Imported, CredentialsError> {
    let Some((r, path)) = spec
        .replication
        .as_ref()
        .and_then(|r| r.credentials_file.as_ref().map(|p| (r, p)))
    else {
        return Ok(Imported::default());
    };
    read_secret(path)?; // refuses a file others can read
    let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Bad {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let file: CredentialsFile = toml::from_str(&text).map_err(|e| CredentialsError::Bad {
        path: path.clone(),
        why: e.to_string().trim().replace('\n', " "),
    })?;
    let mut wanted = vec![
        (r.password_file.clone(), file.replication_password, true),
        (
            spec.postgres.superuser_password_file.clone(),
            file.superuser_password,
            true,
        ),
    ];
    for app in &spec.apps {
        if let Some(pw) = file.apps.get(&app.name) {
            wanted.push((app.password_file.clone(), pw.clone(), true));
        }
    }
    if let Some(ca) = file.ca {
        let (key, cert) = crate::tls::ca_paths(spec);
        wanted.push((key, ca.key, false));
        wanted.push((cert, ca.certificate, false));
        wanted.push((crate::tls::ca_owner_path(spec), ca.owner, false));
    }
    let new_replica = !spec.data_disk.path.exists();
    let mut done = Imported::default();
    for (target, value, is_password) in wanted {
        if is_password && value.len() < 8 {
            return Err(CredentialsError::Bad {
                path: path.clone(),
                why: format!(
                    "a password for {} is shorter than 8 characters",
                    target.display()
                ),
            });
        }
        let current = std::fs::read_to_string(&target).ok();
        if current.as_deref().map(str::trim_end) == Some(value.trim_end()) {
            continue;
        }
        if current.is_some() && !new_replica {
            done.kept.push(target);
            continue;
        }
        write_secret(&target, &value)?;
        done.written.push(target);
    }
    Ok(done)
}

/// Replaces a secret file atomically, mode 0600 (its directory 0700).
fn write_secret(path: &Path, value: &str) -> Result<(), CredentialsError> {
    let err = |source| CredentialsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    let mut text = value.trim_end().to_string();
    text.push('\n');
    write_private(path, text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::env_in;

    fn spec(dir: &Path, text: &str) -> Spec {
        Spec::parse(text, dir, &env_in(dir, false), "test.toml").unwrap()
    }

    #[test]
    fn the_replicas_host_takes_the_clusters_passwords() {
        let a = tempfile::tempdir().unwrap();
        let primary = spec(
            a.path(),
            "[replication]\nrole = \"primary\"\npeer = \"sql-replica\"\n[[apps]]\nname = \"forgejo\"\n",
        );
        crate::secrets::ensure_all(&primary).unwrap();
        let creds = a.path().join("out.credentials");
        write(&primary, &creds).unwrap();
        let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let b = tempfile::tempdir().unwrap();
        let replica = spec(
            b.path(),
            &format!(
                "hostname = \"sql-replica\"\n[replication]\nrole = \"replica\"\npeer = \"sql-vm\"\ncredentials_file = {:?}\n[[apps]]\nname = \"forgejo\"\n",
                creds.display().to_string()
            ),
        );
        let done = import(&replica).unwrap();
        assert_eq!(done.written.len(), 6, "3 passwords and the CA: {done:?}");
        let same = |x: &Path, y: &Path| read_secret(x).unwrap() == read_secret(y).unwrap();
        assert!(same(
            &primary.postgres.superuser_password_file,
            &replica.postgres.superuser_password_file
        ));
        assert!(same(
            &primary.apps[0].password_file,
            &replica.apps[0].password_file
        ));
        let (p, r) = (
            primary.replication.clone().unwrap(),
            replica.replication.clone().unwrap(),
        );
        assert!(same(&p.password_file, &r.password_file));
        assert_eq!(
            crate::tls::ca_certificate(&primary).unwrap(),
            crate::tls::ca_certificate(&replica).unwrap(),
            "one CA for the cluster"
        );
        assert_eq!(crate::tls::ca_owner(&replica), primary.name);
        assert_eq!(
            import(&replica).unwrap(),
            Imported::default(),
            "a second start changes nothing"
        );

        // Once the node has its data disk, a password rotated on this host stays.
        std::fs::write(&replica.data_disk.path, "").unwrap();
        write_secret(&replica.apps[0].password_file, "rotated-since-then").unwrap();
        let done = import(&replica).unwrap();
        assert!(done.written.is_empty(), "{done:?}");
        assert_eq!(done.kept, [replica.apps[0].password_file.clone()]);
        assert_eq!(
            read_secret(&replica.apps[0].password_file)
                .unwrap()
                .expose(),
            "rotated-since-then"
        );

        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = import(&replica).unwrap_err().to_string();
        assert!(e.contains("mode 644"), "{e}");
    }

    #[test]
    fn a_spec_without_replication_has_no_credentials() {
        let a = tempfile::tempdir().unwrap();
        let e = render(&spec(a.path(), "")).unwrap_err().to_string();
        assert!(e.contains("[replication]"), "{e}");
    }
}
