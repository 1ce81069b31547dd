//! `sovereign-kconfig`: checks a kernel configuration against the Sovereign fragments
//! (exit 1 naming every option that does not hold), and prints the merged fragment the
//! kernel build starts from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sovereign_kernel_config::{
    check, detect_image_arch, merged_fragment, requirements, Arch, KernelConfig,
};

/// Checks a kernel configuration against the Sovereign guest fragments.
#[derive(Debug, Parser)]
#[command(name = "sovereign-kconfig", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that every option of the fragments holds; print each one that does not
    /// (exit 1), else "all N options hold" (exit 0). Unreadable input exits 2.
    Check {
        /// Guest architecture: x86_64 (amd64) or arm64 (aarch64).
        #[arg(long)]
        arch: Arch,
        #[command(flatten)]
        source: Source,
    },
    /// Print the merged fragment (common + arch) as .config lines.
    Fragments {
        /// Guest architecture: x86_64 (amd64) or arm64 (aarch64).
        #[arg(long)]
        arch: Arch,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// A .config file (e.g. the build directory's).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A kernel boot image (bzImage or Image) built with CONFIG_IKCONFIG=y.
    #[arg(long, value_name = "IMAGE")]
    kernel: Option<PathBuf>,
    /// A gzip'ed config, e.g. a copy of a running kernel's /proc/config.gz.
    #[arg(long, value_name = "FILE.gz")]
    proc_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Fragments { arch } => {
            print!("{}", merged_fragment(arch));
            ExitCode::SUCCESS
        }
        Command::Check { arch, source } => match load(arch, &source) {
            Ok((what, config)) => report(arch, &what, &config),
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
    }
}

/// Reads the configuration named by `source`; the error is a complete message.
fn load(arch: Arch, source: &Source) -> Result<(String, KernelConfig), String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    if let Some(path) = &source.config {
        let text = read(path)?;
        let config = KernelConfig::parse(&String::from_utf8_lossy(&text));
        if config.is_empty() {
            return Err(format!(
                "{} has no CONFIG_ options: not a kernel .config",
                path.display()
            ));
        }
        return Ok((path.display().to_string(), config));
    }
    if let Some(path) = &source.kernel {
        let bytes = read(path)?;
        let image_arch =
            detect_image_arch(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if image_arch != arch {
            return Err(format!(
                "{} is an {image_arch} kernel, but --arch {arch} was asked for",
                path.display()
            ));
        }
        let config = KernelConfig::from_kernel_image(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((format!("the config embedded in {}", path.display()), config));
    }
    if let Some(path) = &source.proc_config {
        let bytes = read(path)?;
        let config =
            KernelConfig::from_gzip(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((path.display().to_string(), config));
    }
    Err("give one of --config, --kernel or --proc-config".to_string())
}

fn report(arch: Arch, what: &str, config: &KernelConfig) -> ExitCode {
    let reqs = requirements(arch);
    let mismatches = check(config, &reqs);
    if mismatches.is_empty() {
        println!("all {} options hold", reqs.len());
        return ExitCode::SUCCESS;
    }
    for m in &mismatches {
        println!("{m}");
    }
    eprintln!(
        "{} of the {} options the {arch} fragments ask for do not hold in {what}",
        mismatches.len(),
        reqs.len()
    );
    ExitCode::from(1)
}
