use super::journal::{self, Journal, Step};
use super::slots::Staging;
use super::*;
use crate::spec::tests::env_in;
use protocol::manifest::{FileMode, Manifest};
use protocol::Arch;

/// A spec whose state and files live in `dir`, for x86_64.
fn spec_in(dir: &Path) -> Spec {
    let env = env_in(dir, false);
    Spec::parse("arch = \"x86_64\"\n", dir, &env, "t.toml").unwrap()
}

/// An artifact directory with `files` (name, contents) and a manifest of them.
fn set_dir(files: &[(&str, &str)], versions: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        entries.push(ManifestEntry {
            name: (*name).into(),
            size: text.len() as u64,
            sha256: sha256_file(&path).unwrap(),
            mode: FileMode(0o644),
            deploy: true,
        });
    }
    let m = Manifest {
        arch: Arch::X86_64,
        files: entries,
        versions: versions
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
    };
    std::fs::write(dir.path().join("manifest.json"), m.to_json()).unwrap();
    dir
}

#[test]
fn a_set_is_read_from_its_manifest_and_named_by_its_boot_files() {
    let home = tempfile::tempdir().unwrap();
    let spec = spec_in(home.path());
    let slots = slots_of(&spec).unwrap();
    assert_eq!(slots[0].path, home.path().join("bzImage"));
    let a = set_dir(
        &[("bzImage", "k1"), ("root.img", "r1"), ("sovereign", "x")],
        &[("postgres", "17.6-0+deb13u1")],
    );
    let c = candidate(&spec, &slots, a.path()).unwrap();
    assert_eq!(c.set.id.len(), 12);
    assert_eq!(c.files[1].1.name, "root.img");
    // The same boot files are the same set; another root image is another.
    let same = set_dir(&[("root.img", "r1"), ("bzImage", "k1")], &[]);
    assert_eq!(
        candidate(&spec, &slots, same.path()).unwrap().set.id,
        c.set.id
    );
    let other = set_dir(&[("bzImage", "k1"), ("root.img", "r2")], &[]);
    assert_ne!(
        candidate(&spec, &slots, other.path()).unwrap().set.id,
        c.set.id
    );

    let no_root = set_dir(&[("bzImage", "k1")], &[]);
    let e = candidate(&spec, &slots, no_root.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has no root.img") && e.contains("lists bzImage"),
        "{e}"
    );
    let e = candidate(&spec, &slots, home.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn another_postgres_major_is_refused_before_anything_moves() {
    let new = InstalledSet {
        id: "abc".into(),
        versions: [("postgres".to_string(), "18.1-1".to_string())].into(),
        source: "/sets/new".into(),
        installed_unix: 0,
    };
    let running: Versions = [("postgres".to_string(), "17.6-0+deb13u1".to_string())].into();
    let e = check_major(&new, Some(("the running VM".into(), &running)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("PostgreSQL 18") && e.contains("the running VM runs PostgreSQL 17"),
        "{e}"
    );
    assert!(e.contains("nothing was changed"), "{e}");
    check_major(&new, None).unwrap();
    let mut minor = new.clone();
    minor
        .versions
        .insert("postgres".into(), "17.7-0+deb13u1".into());
    check_major(&minor, Some(("x".into(), &running))).unwrap();
    check_major(&minor, Some(("x".into(), &Versions::new()))).unwrap();
}

#[test]
fn a_staged_copy_that_differs_from_its_manifest_is_removed_and_named() {
    let home = tempfile::tempdir().unwrap();
    let spec = spec_in(home.path());
    let slots = slots_of(&spec).unwrap();
    let a = set_dir(&[("bzImage", "k1"), ("root.img", "r1")], &[]);
    let c = candidate(&spec, &slots, a.path()).unwrap();
    std::fs::write(a.path().join("root.img"), "changed").unwrap();
    let mut said = Vec::new();
    let e = stage_copies(&c, &mut |l| said.push(l.to_string()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("root.img: SHA-256") && e.contains("nothing was changed"),
        "{e}"
    );
    assert!(!slots[1].next().exists());
    assert_eq!(said.len(), 2, "{said:?}");
}

#[test]
fn the_next_start_undoes_an_update_a_power_cut_left_and_says_so() {
    let home = tempfile::tempdir().unwrap();
    let spec = spec_in(home.path());
    std::fs::create_dir_all(&spec.run_dir).unwrap();
    assert_eq!(journal::recover(&spec).unwrap(), None);
    let slots = slots_of(&spec).unwrap();
    let a = set_dir(&[("bzImage", "new-k"), ("root.img", "new-r")], &[]);
    let c = candidate(&spec, &slots, a.path()).unwrap();
    for s in &slots {
        std::fs::write(&s.path, "old").unwrap();
    }
    stage_copies(&c, &mut |_| {}).unwrap();
    let j = Journal {
        step: Step::Switched,
        staging: Staging::Copied,
        slots: slots.clone(),
        to: c.set.clone(),
        from: None,
        pid: std::process::id(),
    };
    j.record(&journal::file(&spec)).unwrap();
    // This process's own update in progress is left alone; one written by another
    // process (here: one that is gone) is undone.
    j.record(&journal::file(&spec)).unwrap();
    assert_eq!(journal::recover(&spec).unwrap(), None);
    let mut j = j;
    j.pid = 0;
    j.record(&journal::file(&spec)).unwrap();
    // The cut: the kernel switched, the root image not yet.
    std::fs::rename(&slots[0].path, slots[0].previous()).unwrap();
    std::fs::rename(slots[0].next(), &slots[0].path).unwrap();
    let said = journal::recover(&spec).unwrap().unwrap();
    assert!(
        said.contains(&format!("an update to set {}", c.set.id))
            && said.contains("before the new set was proven"),
        "{said}"
    );
    for s in &slots {
        assert_eq!(std::fs::read_to_string(&s.path).unwrap(), "old");
        assert!(!s.next().exists() && !s.previous().exists());
    }
    assert_eq!(journal::recover(&spec).unwrap(), None, "said once");
}

#[test]
fn a_spec_with_an_initrd_has_no_set_to_update() {
    let home = tempfile::tempdir().unwrap();
    let env = env_in(home.path(), false);
    let spec = Spec::parse("initrd = \"i.cpio\"\n", home.path(), &env, "t.toml").unwrap();
    let e = slots_of(&spec).unwrap_err().to_string();
    assert!(e.contains("i.cpio"), "{e}");
}
