//! Exports leave the phone, so they are sealed with the backup passphrase: the age
//! format (scrypt for the passphrase, ChaCha20-Poly1305 in 64 KiB chunks, each with its
//! own tag and the last one marked), so a copy on a laptop or a cloud drive reads as
//! noise, and a file changed or cut anywhere fails to open instead of restoring
//! something else. The guest never sees the sealed form: the host seals what it
//! receives and opens what it sends.

use age::secrecy::SecretString;
use protocol::config::Secret;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What a sealed file starts with.
const MAGIC: &[u8] = b"age-encryption.org/v1";

/// Why a sealed file could not be opened.
#[derive(Debug, Error)]
pub enum SealError {
    #[error("the backup passphrase does not open {path}: it was sealed with another one (on a new phone, `sovereign backup key --set` takes the passphrase it was made with)")]
    WrongPassphrase {
        /// The file.
        path: PathBuf,
    },
    #[error("{path} is damaged or cut short ({why}): nothing was restored from it")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the format said.
        why: String,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

fn secret(passphrase: &Secret) -> SecretString {
    SecretString::from(passphrase.expose().to_string())
}

/// A writer that seals everything written to it into `out`; `finish` writes the last
/// chunk and must be called, or the file cannot be opened.
pub fn seal<W: Write>(out: W, passphrase: &Secret) -> io::Result<age::stream::StreamWriter<W>> {
    age::Encryptor::with_user_passphrase(secret(passphrase)).wrap_output(out)
}

/// Whether the file at `path` is sealed (an export made before exports were sealed is a
/// plain tar).
pub fn is_sealed(path: &Path) -> Result<bool, SealError> {
    let mut head = [0u8; MAGIC.len()];
    let mut f = std::fs::File::open(path).map_err(|source| SealError::Io {
        what: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut read = 0;
    while read < head.len() {
        match f.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SealError::Io {
                    what: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(&head[..read] == MAGIC)
}

/// Opens the sealed file at `path` into `out` whole, checking every chunk; returns the
/// bytes written. A wrong passphrase fails before anything is written.
pub fn open_into(path: &Path, passphrase: &Secret, out: &mut impl Write) -> Result<u64, SealError> {
    let damaged = |why: String| SealError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|source| SealError::Io {
        what: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let decryptor =
        age::Decryptor::new(io::BufReader::new(file)).map_err(|e| damaged(e.to_string()))?;
    let identity = age::scrypt::Identity::new(secret(passphrase));
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                SealError::WrongPassphrase {
                    path: path.to_path_buf(),
                }
            }
            other => damaged(other.to_string()),
        })?;
    io::copy(&mut reader, out).map_err(|e| damaged(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_reads_as_noise_and_opens_only_with_its_passphrase_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.tar");
        let pass = Secret::new("a-long-backup-passphrase-1234");
        let plain = b"marker-8f3a: every table of the database".repeat(4000);
        let mut w = seal(std::fs::File::create(&path).unwrap(), &pass).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        let sealed = std::fs::read(&path).unwrap();
        assert!(is_sealed(&path).unwrap());
        assert!(!sealed.windows(11).any(|x| x == b"marker-8f3a"));

        let mut out = Vec::new();
        assert_eq!(
            open_into(&path, &pass, &mut out).unwrap(),
            plain.len() as u64
        );
        assert_eq!(out, plain);

        let wrong = open_into(
            &path,
            &Secret::new("another-passphrase-5678"),
            &mut Vec::new(),
        );
        assert!(
            matches!(wrong, Err(SealError::WrongPassphrase { .. })),
            "{wrong:?}"
        );

        let cut = dir.path().join("cut.tar");
        std::fs::write(&cut, &sealed[..sealed.len() / 2]).unwrap();
        let e = open_into(&cut, &pass, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, SealError::Damaged { .. }), "{e:?}");

        std::fs::write(&cut, b"plain tar").unwrap();
        assert!(!is_sealed(&cut).unwrap());
    }
}
