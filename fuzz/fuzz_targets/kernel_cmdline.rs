//! Feeds arbitrary kernel command lines to PID 1's `sovereign.*` parser: it must never
//! panic, warn at most once per `sovereign.` word, and keep every value in its range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovereign_init::cmdline::parse;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (config, warnings) = parse(&text);
    let words = text
        .split_ascii_whitespace()
        .filter(|w| w.starts_with("sovereign."))
        .count();
    assert!(warnings.len() <= words, "{warnings:?} for {words} words");
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&config.device_wait)
    );
    assert!(config.data_disk.starts_with("/dev/"));
    assert!(config.control_port != 0 && config.control_port != u32::MAX);
    assert!(config.network_port != 0 && config.network_port != u32::MAX);
    assert_eq!(parse(&text), (config, warnings), "parsing is deterministic");
});
