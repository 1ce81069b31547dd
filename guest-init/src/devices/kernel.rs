//! The running kernel as the devices stage sees it: its release and the configuration
//! it was built with (`/proc/config.gz`), checked against the fragments it must have.

use kernel_config::{Arch, KernelConfig};
use thiserror::Error;

/// Why the running kernel's configuration cannot be read.
#[derive(Debug, Error)]
pub enum RunningConfigError {
    #[error("/proc/config.gz unavailable ({0}): kernel built without CONFIG_IKCONFIG_PROC")]
    Missing(std::io::Error),
    #[error("/proc/config.gz unreadable: {0}")]
    Unreadable(kernel_config::ConfigError),
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads and inflates /proc/config.gz.
pub fn running_config() -> Result<KernelConfig, RunningConfigError> {
    let bytes = std::fs::read("/proc/config.gz").map_err(RunningConfigError::Missing)?;
    KernelConfig::from_gzip(&bytes).map_err(RunningConfigError::Unreadable)
}

/// Every required option `config` lacks, one line each (empty on an arch the guest
/// does not support, where no fragment applies).
pub fn missing_options(config: &KernelConfig) -> Vec<String> {
    let Some(arch) = Arch::host() else {
        return Vec::new();
    };
    kernel_config::check(config, &kernel_config::requirements(arch))
        .iter()
        .map(ToString::to_string)
        .collect()
}
