//! TLS for postgres: the certificate and key the launcher issued for this start go into
//! the socket directory (tmpfs, owned by postgres, 0600: the key never touches a
//! disk), and postgresql.conf turns `ssl` on with them. Plain connections stay possible
//! over the tailnet, which WireGuard already encrypts; `sslmode=verify-full` proves
//! the server is this VM.

use super::config::SOCKET_DIR;
use crate::owned_files::{self, OwnedFileError, Owner};
use protocol::config::TlsMaterial;
use std::path::Path;

/// The certificate's file name in the socket directory.
const CERT_FILE: &str = "server.crt";
/// The key's file name in the socket directory.
const KEY_FILE: &str = "server.key";
/// The cluster CA's certificate in the socket directory.
const CA_FILE: &str = "ca.crt";

/// Where the certificate, its key and the cluster CA's certificate are (for pgBackRest's
/// TLS between the nodes of a cluster, which presents the same certificate).
pub fn paths() -> [std::path::PathBuf; 3] {
    [CERT_FILE, KEY_FILE, CA_FILE].map(|f| Path::new(SOCKET_DIR).join(f))
}

/// Writes the certificate, its key and the CA's certificate for postgres.
pub fn install(material: &TlsMaterial, owner: Owner) -> Result<(), OwnedFileError> {
    let dir = Path::new(SOCKET_DIR);
    if !material.ca_pem.is_empty() {
        owned_files::write_file(&dir.join(CA_FILE), material.ca_pem.as_bytes(), 0o644, owner)?;
    }
    owned_files::write_file(
        &dir.join(CERT_FILE),
        material.certificate_pem.as_bytes(),
        0o600,
        owner,
    )?;
    owned_files::write_file(
        &dir.join(KEY_FILE),
        material.key_pem.expose().as_bytes(),
        0o600,
        owner,
    )
}

/// postgresql.conf lines that serve TLS with the installed files.
pub fn conf_lines() -> String {
    format!(
        "# TLS with the launcher's certificate for this start\n\
         ssl = on\n\
         ssl_cert_file = '{SOCKET_DIR}/{CERT_FILE}'\n\
         ssl_key_file = '{SOCKET_DIR}/{KEY_FILE}'\n\
         ssl_min_protocol_version = 'TLSv1.2'\n"
    )
}
