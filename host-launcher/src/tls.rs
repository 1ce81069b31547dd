//! The database's TLS: a certificate authority the launcher makes once per VM (its key
//! in the secrets directory, 0600; its certificate beside it, for clients), and a
//! server certificate for the VM's tailnet name, issued afresh at every start and
//! handed to the guest with its key over the control channel only. Pure Rust (rcgen
//! with P-256 ECDSA from RustCrypto), so the launcher stays a static binary with no C
//! toolchain for the phone.

use crate::spec::Spec;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RemoteKeyPair, SanType,
    SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// How long a server certificate is valid (it is reissued at every start).
const SERVER_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);

/// Why the CA or a certificate could not be made.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{path} is not a PKCS#8 P-256 private key: {why}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// A P-256 key rcgen signs with through [`RemoteKeyPair`] (rcgen's own keys would need
/// ring or aws-lc, which need a C compiler for the phone's target).
struct P256 {
    key: SigningKey,
    public: Vec<u8>,
}

impl P256 {
    fn new(key: SigningKey) -> Self {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        P256 { key, public }
    }

    fn into_key_pair(self) -> Result<KeyPair, rcgen::Error> {
        KeyPair::from_remote(Box::new(self))
    }
}

impl RemoteKeyPair for P256 {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: DerSignature = self.key.sign(msg);
        Ok(signature.as_bytes().to_vec())
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Where the CA lives: (key, certificate).
pub fn ca_paths(spec: &Spec) -> (PathBuf, PathBuf) {
    (
        spec.secrets_dir.join(format!("{}-ca.key", spec.name)),
        spec.secrets_dir.join(format!("{}-ca.crt", spec.name)),
    )
}

/// Where a CA taken from another node's credentials file records whose it is.
pub fn ca_owner_path(spec: &Spec) -> PathBuf {
    spec.secrets_dir.join(format!("{}-ca.owner", spec.name))
}

/// The VM whose name the CA's certificate carries: this one, unless the CA came with
/// a replica's credentials from the node that made it (one CA for the cluster).
pub fn ca_owner(spec: &Spec) -> String {
    std::fs::read_to_string(ca_owner_path(spec))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| spec.name.clone())
}

/// The CA's fixed parameters; the same each time, so that a certificate issued with
/// them and the stored key chains to the stored CA certificate.
fn ca_params(spec: &Spec) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Sovereign");
    dn.push(
        DnType::CommonName,
        format!("Sovereign database CA for VM {}", ca_owner(spec)),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2046, 1, 1);
    p.serial_number = Some(serial());
    p
}

/// A random positive serial number (rcgen makes none without its own crypto backend).
fn serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    let write = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write)?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(write)
}

/// The CA's key and certificate, made on first use (key 0600, certificate 0644).
fn ensure_ca(spec: &Spec) -> Result<(SigningKey, Certificate), TlsError> {
    let (key_path, cert_path) = ca_paths(spec);
    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| TlsError::BadKey {
            path: key_path.clone(),
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::random(&mut rand_core::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| TlsError::BadKey {
                    path: key_path.clone(),
                    why: e.to_string(),
                })?;
            write_new(&key_path, pem.as_bytes(), 0o600)?;
            let _ = std::fs::remove_file(&cert_path);
            key
        }
        Err(source) => {
            return Err(TlsError::Read {
                path: key_path,
                source,
            })
        }
    };
    let ca = ca_params(spec).self_signed(&P256::new(key.clone()).into_key_pair()?)?;
    if !cert_path.exists() {
        write_new(&cert_path, ca.pem().as_bytes(), 0o644)?;
    }
    Ok((key, ca))
}

/// The CA certificate clients trust (PEM), made on first use.
pub fn ca_certificate(spec: &Spec) -> Result<String, TlsError> {
    ensure_ca(spec)?;
    let (_, cert_path) = ca_paths(spec);
    std::fs::read_to_string(&cert_path).map_err(|source| TlsError::Read {
        path: cert_path,
        source,
    })
}

/// Where the tailnet's full names for the VM are kept, one per line (e.g.
/// `sql-vm.tail.example`): learned from the guest's `tailscale` stage, they join the
/// short name in every later certificate, so `sslmode=verify-full` works with either.
pub fn names_path(spec: &Spec) -> PathBuf {
    spec.secrets_dir.join(format!("{}-tls-names", spec.name))
}

/// The names a server certificate carries: the spec's hostname, then every learned
/// full name that still belongs to it (its first label is the hostname).
pub fn server_names(spec: &Spec) -> Vec<String> {
    let learned = std::fs::read_to_string(names_path(spec)).unwrap_or_default();
    let mut names = vec![spec.hostname.clone()];
    for name in learned.lines().map(str::trim) {
        if full_name_of(&spec.hostname, name).is_some() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// `name` without its trailing dot when it is a DNS name under `hostname`
/// (`sql-vm.tail.example.` for `sql-vm`); `None` for anything else, so a guest can
/// never have the CA sign a name that is not its own.
fn full_name_of(hostname: &str, name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let rest = name.strip_prefix(hostname)?.strip_prefix('.')?;
    let labels_ok = rest.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    (labels_ok && name.len() <= 253).then_some(name)
}

/// Records the full name the tailnet gave the VM (from its `tailscale` stage). Returns
/// true when it is new: the running server's certificate then lacks it.
pub fn learn_name(spec: &Spec, tailnet_name: &str) -> Result<bool, TlsError> {
    let Some(name) = full_name_of(&spec.hostname, tailnet_name) else {
        return Ok(false);
    };
    if server_names(spec).contains(&name) {
        return Ok(false);
    }
    let path = names_path(spec);
    let write = |source| TlsError::Write {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .map_err(write)?;
    f.write_all(format!("{name}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write)?;
    Ok(true)
}

/// Where the server certificate last issued is kept (public; its key is not kept), for
/// the `certificate-expiring` alert and for a user who wants to read it.
pub fn server_certificate_path(spec: &Spec) -> PathBuf {
    spec.secrets_dir.join(format!("{}-server.crt", spec.name))
}

/// A new server certificate for the VM's tailnet names ([`server_names`]), signed by
/// the CA: (certificate PEM, PKCS#8 key PEM). The certificate (not its key) is written
/// to [`server_certificate_path`].
pub fn server_certificate(spec: &Spec) -> Result<(String, String), TlsError> {
    let (ca_key, ca) = ensure_ca(spec)?;
    let key = SigningKey::random(&mut rand_core::OsRng);
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| TlsError::BadKey {
            path: PathBuf::from("(new server key)"),
            why: e.to_string(),
        })?
        .to_string();
    let names = server_names(spec);
    let mut p = CertificateParams::new(names.clone())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, spec.hostname.clone());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // ClientAuth too: a node presents the same certificate to its peers' pgBackRest
    // servers (backups from a replica ask the primary over TLS).
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(24 * 3600)).into();
    p.not_after = (now + SERVER_VALIDITY).into();
    p.serial_number = Some(serial());
    p.subject_alt_names = names
        .into_iter()
        .map(|n| Ok(SanType::DnsName(n.try_into()?)))
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    let leaf = p.signed_by(
        &P256::new(key).into_key_pair()?,
        &ca,
        &P256::new(ca_key).into_key_pair()?,
    )?;
    let pem = leaf.pem();
    let path = server_certificate_path(spec);
    crate::secrets::write_private(&path, pem.as_bytes())
        .map_err(|source| TlsError::Write { path, source })?;
    Ok((pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn spec_in(dir: &Path) -> Spec {
        let mut spec = Spec::builtin_sql(&crate::spec::tests::env_in(dir, false)).unwrap();
        spec.secrets_dir = dir.to_path_buf();
        spec
    }

    /// OpenSSL, the library libpq uses, checks the chain and the name.
    #[test]
    fn the_server_certificate_chains_to_the_kept_ca_and_names_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let ca = ca_certificate(&spec).unwrap();
        let (cert, key) = server_certificate(&spec).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let (key_path, ca_path) = ca_paths(&spec);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca);
        // A second certificate, after the CA was read back from its files, chains too.
        let (again, _) = server_certificate(&spec).unwrap();
        for (i, leaf) in [cert, again].iter().enumerate() {
            let leaf_path = dir.path().join(format!("leaf{i}.crt"));
            std::fs::write(&leaf_path, leaf).unwrap();
            let out = Command::new("openssl")
                .args(["verify", "-verify_hostname", "sql-vm", "-CAfile"])
                .arg(&ca_path)
                .arg(&leaf_path)
                .output()
                .expect("openssl (Debian package openssl)");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let wrong = Command::new("openssl")
                .args(["verify", "-verify_hostname", "other-vm", "-CAfile"])
                .arg(&ca_path)
                .arg(&leaf_path)
                .output()
                .unwrap();
            assert!(!wrong.status.success(), "another name must not verify");
        }
    }

    #[test]
    fn a_learned_full_name_joins_the_certificate_and_foreign_names_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        assert!(!learn_name(&spec, "bank.example.").unwrap());
        assert!(!learn_name(&spec, "sql-vm-1.tail.example.").unwrap());
        assert!(!learn_name(&spec, "sql-vm").unwrap());
        assert!(!learn_name(&spec, "sql-vm.bad label.example").unwrap());
        assert!(learn_name(&spec, "sql-vm.Tail.Example.").unwrap());
        assert!(
            !learn_name(&spec, "sql-vm.tail.example").unwrap(),
            "already known"
        );
        assert_eq!(server_names(&spec), ["sql-vm", "sql-vm.tail.example"]);
        let (cert, _) = server_certificate(&spec).unwrap();
        let leaf = dir.path().join("leaf.crt");
        std::fs::write(&leaf, cert).unwrap();
        let (_, ca_path) = ca_paths(&spec);
        for (name, ok) in [
            ("sql-vm.tail.example", true),
            ("sql-vm", true),
            ("bank.example", false),
        ] {
            let out = Command::new("openssl")
                .args(["verify", "-verify_hostname", name, "-CAfile"])
                .arg(&ca_path)
                .arg(&leaf)
                .output()
                .unwrap();
            assert_eq!(out.status.success(), ok, "{name}");
        }
    }
}
