//! What the launcher learns from the kernel image before booting it: its architecture
//! (validation refuses a foreign one) and, when it embeds its config (IKCONFIG), which
//! required options it lacks (preflight warns, and a boot failure quotes them).

use kernel_config::{Arch, KernelConfig, Mismatch};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a kernel image could not be inspected.
#[derive(Debug, Error)]
pub enum KernelError {
    #[error("cannot read kernel image {path}: {source}")]
    Read {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Image(#[from] kernel_config::ConfigError),
}

fn read(path: &Path) -> Result<Vec<u8>, KernelError> {
    std::fs::read(path).map_err(|source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The architecture of a bzImage (`HdrS` at 0x202) or arm64 Image (`ARM\x64` at 0x38).
pub fn image_arch(path: &Path) -> Result<Arch, KernelError> {
    let mut head = vec![0u8; 4096];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|source| KernelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(source) => {
                    return Err(KernelError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        n
    };
    head.truncate(n);
    Ok(kernel_config::detect_image_arch(&head)?)
}

/// The required options (common + `arch` fragments) the image's embedded config lacks.
pub fn missing_options(path: &Path, arch: Arch) -> Result<Vec<Mismatch>, KernelError> {
    let bytes = read(path)?;
    let config = KernelConfig::from_kernel_image(&bytes)?;
    Ok(kernel_config::check(
        &config,
        &kernel_config::requirements(arch),
    ))
}
