//! `enable` and `disable`: install or remove the boot script that starts the VM after
//! the phone reboots (see [`crate::autostart`]).

use crate::autostart;
use crate::paths::HostEnv;
use crate::spec::{RestartPolicy, Spec};
use anyhow::Context as _;
use std::path::Path;

/// Runs `enable`; returns the exit code.
pub fn enable(spec: &Spec, spec_file: Option<&Path>, env: &HostEnv) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding this sovereign binary")?;
    let spec_file = spec_file
        .map(|f| std::fs::canonicalize(f).with_context(|| format!("resolving {}", f.display())))
        .transpose()?;
    let (launch, copied) = autostart::trusted_launch(env, &exe, spec_file.as_deref())?;
    if copied {
        println!(
            "  + copied {} to {}: others can replace the first, and the boot script runs it as root",
            exe.display(),
            launch.sovereign.display()
        );
    }
    let path = autostart::enable(env, spec, &launch)?;
    println!(
        "enabled: {} starts VM {} once the phone has booted (output: {})",
        path.display(),
        spec.name,
        spec.log_file("autostart").display()
    );
    if spec.restart == RestartPolicy::No {
        println!(
            "note: restart = \"no\" in this spec: after a reboot the VM comes back, but not after its VMM dies"
        );
    }
    Ok(0)
}

/// Runs `disable`; returns the exit code.
pub fn disable(spec: &Spec, env: &HostEnv) -> anyhow::Result<i32> {
    match autostart::disable(env, &spec.name)? {
        Some(path) => println!(
            "disabled: removed {}; a running VM keeps running (`sovereign stop` stops it)",
            path.display()
        ),
        None => println!(
            "VM {} was not enabled (no {})",
            spec.name,
            autostart::script_path(env, &spec.name).display()
        ),
    }
    Ok(0)
}
