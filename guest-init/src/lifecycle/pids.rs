//! Finding this VM's processes by program name in `/proc`. PID 1 needs it where a PID
//! alone says nothing: PIDs of an earlier boot come round again in a fresh guest.

use nix::unistd::Pid;
use std::path::Path;

/// Live processes whose program is `name`, as the kernel records it in
/// `/proc/PID/comm` (set at exec, so a process that rewrites its title, as postgres's
/// backends do, still counts). Zombies awaiting the reaper count as gone. Names longer
/// than the kernel keeps (15 bytes) never match.
pub fn named(name: &str) -> Vec<Pid> {
    named_in(Path::new("/proc"), name)
}

/// [`named`] over any proc-like tree, so the rule can be tested without a live system.
pub fn named_in(proc_root: &Path, name: &str) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim_end_matches('\n') != name {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            (!zombie).then(|| Pid::from_raw(pid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(root: &Path, pid: &str, comm: &str, state: char) {
        let dir = root.join(pid);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        let stat = format!("{pid} ({comm}) {state} 1 {pid} {pid} 0 -1\n");
        std::fs::write(dir.join("stat"), stat).unwrap();
    }

    #[test]
    fn finds_live_processes_by_program_and_skips_zombies_and_others() {
        let dir = tempfile::tempdir().unwrap();
        process(dir.path(), "1", "sovereign-init", 'S');
        process(dir.path(), "137", "postgres", 'S');
        process(dir.path(), "140", "postgres", 'R');
        process(dir.path(), "141", "postgres-helper", 'S');
        process(dir.path(), "142", "postgres", 'Z');
        process(dir.path(), "self", "postgres", 'S');
        std::fs::create_dir_all(dir.path().join("sys")).unwrap();
        let mut found: Vec<i32> = named_in(dir.path(), "postgres")
            .into_iter()
            .map(Pid::as_raw)
            .collect();
        found.sort_unstable();
        assert_eq!(found, [137, 140]);
        assert!(named_in(dir.path(), "pgbackrest").is_empty());
        assert!(named_in(&dir.path().join("absent"), "postgres").is_empty());
    }

    #[test]
    fn this_test_process_is_found_by_its_own_name() {
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        let own = own.trim_end();
        assert!(named(own).contains(&nix::unistd::getpid()));
    }
}
