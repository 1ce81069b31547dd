//! Feeds arbitrary bytes to the gvproxy frame splitter: it must never panic, never
//! return a frame longer than the limit or beyond the input, and always make progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovereign_protocol::hyperkit::{max_frame_len, split_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&mtu_byte, rest)) = data.split_first() else { return };
    let max = max_frame_len(1280 + u16::from(mtu_byte) * 8);
    let mut buf = rest;
    while let Ok(Some((frame, used))) = split_frame(buf, max) {
        assert!(!frame.is_empty() && frame.len() <= max);
        assert_eq!(used, frame.len() + 2);
        assert!(used <= buf.len());
        buf = &buf[used..];
    }
});
