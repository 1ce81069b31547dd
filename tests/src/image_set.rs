//! Image sets for `sovereign update` drills, made from the artifact set's own files:
//! the same kernel, a copy of the root image changed with debugfs (another build in its
//! release file, a file taken out), and a manifest written by the code that writes
//! build-images.sh's.

use crate::artifacts::Artifacts;
use crate::process::{run, text};
use protocol::release::{self, Versions, RELEASE_FILE};
use std::path::Path;
use std::process::Command;

/// A set in a directory of its own.
#[derive(Debug)]
pub struct ImageSet {
    /// Its directory (kernel, root.img, manifest.json).
    pub dir: tempfile::TempDir,
    /// Its versions, as its manifest says.
    pub versions: Versions,
}

/// How a derived set differs from the artifact set.
#[derive(Debug, Clone, Default)]
pub struct Changes<'a> {
    /// The release file's `build`.
    pub build: &'a str,
    /// Paths removed from the root image.
    pub remove: &'a [&'a str],
    /// What the manifest says of PostgreSQL instead of the image's own version.
    pub manifest_postgres: Option<&'a str>,
}

fn debugfs(image: &Path, request: &str, write: bool) -> String {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let o = run(cmd.arg("-R").arg(request).arg(image));
    assert!(o.status.success(), "debugfs -R {request:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl ImageSet {
    /// A set like `a`'s with `changes` made.
    pub fn derived(a: &Artifacts, changes: &Changes<'_>) -> ImageSet {
        let dir = tempfile::Builder::new()
            .prefix("sov-set-")
            .tempdir_in("/tmp")
            .expect("set dir");
        let kernel_name = a
            .kernel
            .file_name()
            .expect("kernel file name")
            .to_string_lossy()
            .into_owned();
        std::fs::copy(&a.kernel, dir.path().join(&kernel_name)).expect("copy kernel");
        let image = dir.path().join("root.img");
        let o = run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&a.root_image)
            .arg(&image));
        assert!(o.status.success(), "copying the root image: {}", text(&o));

        let mut versions = release::parse(&debugfs(&image, &format!("cat {RELEASE_FILE}"), false));
        assert!(
            versions.contains_key("postgres"),
            "the artifact set's root image has no release file: rebuild it ({versions:?})"
        );
        versions.insert("build".into(), changes.build.into());
        let file = dir.path().join("release");
        let body: String = versions.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&file, body).expect("release file");
        debugfs(&image, &format!("rm {RELEASE_FILE}"), true);
        debugfs(
            &image,
            &format!("write {} {RELEASE_FILE}", file.display()),
            true,
        );
        std::fs::remove_file(&file).expect("remove the release file's copy");
        for path in changes.remove {
            debugfs(&image, &format!("rm {path}"), true);
        }
        if let Some(pg) = changes.manifest_postgres {
            versions.insert("postgres".into(), pg.into());
        }
        let names = vec![kernel_name, "root.img".to_string()];
        let arch = if a.kernel.ends_with("Image") {
            protocol::Arch::Arm64
        } else {
            protocol::Arch::X86_64
        };
        let m =
            xtask::manifest::build(arch, dir.path(), &names, versions.clone()).expect("manifest");
        xtask::manifest::write(dir.path(), &m).expect("write manifest");
        ImageSet { dir, versions }
    }

    /// Its directory as `update --images` takes it.
    pub fn path(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 temporary path")
    }
}
