//! PID 1's own memory, for the census and the status: the footprint target (a couple
//! of MiB after ready) is only worth something if every boot can show it.

use protocol::messages::ProcessMemory;

/// This process's resident and peak resident memory, from /proc/self/status.
pub fn read() -> Option<ProcessMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse(&status)
}

/// `VmRSS:` and `VmHWM:` of a /proc/<pid>/status text, with its split into anonymous
/// and file pages and the thread count where the kernel gives them.
fn parse(status: &str) -> Option<ProcessMemory> {
    Some(ProcessMemory {
        rss_kib: field_kib(status, "VmRSS:")?,
        peak_kib: field_kib(status, "VmHWM:")?,
        anon_kib: field_kib(status, "RssAnon:"),
        file_kib: field_kib(status, "RssFile:"),
        threads: field(status, "Threads:").and_then(|v| v.parse().ok()),
    })
}

/// A `Name:\tvalue` field's value, trimmed.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// A `Name:   1234 kB` field's value in KiB.
fn field_kib(status: &str, name: &str) -> Option<u64> {
    field(status, name)
        .and_then(|v| v.strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_and_peak_are_read_from_proc_status() {
        let status = "Name:\tsovereign-init\nVmPeak:\t   9000 kB\nVmHWM:\t    2900 kB\n\
                      VmRSS:\t    2312 kB\nRssAnon:\t     600 kB\nRssFile:\t    1712 kB\n\
                      Threads:\t3\n";
        assert_eq!(
            parse(status),
            Some(ProcessMemory {
                rss_kib: 2312,
                peak_kib: 2900,
                anon_kib: Some(600),
                file_kib: Some(1712),
                threads: Some(3),
            })
        );
        let old = parse("VmHWM:\t2900 kB\nVmRSS:\t2312 kB\n").unwrap();
        assert_eq!(
            (old.anon_kib, old.file_kib, old.threads),
            (None, None, None)
        );
        assert_eq!(parse("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(parse("VmHWM:\t1 kB\nVmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let m = read().unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib, "{m:?}");
    }
}
