//! Feeds arbitrary bytes to the control channel decoder in both directions' message
//! types and through the streaming reader: errors are fine, panics are not, and a
//! decoded message must re-encode to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovereign_protocol::{decode_frame, encode_frame, FrameReader, GuestMessage, HostMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((msg, used))) = decode_frame::<GuestMessage>(data) {
        assert!(used <= data.len());
        let again = encode_frame(&msg).expect("a decoded message re-encodes");
        let (back, _) = decode_frame::<GuestMessage>(&again).unwrap().unwrap();
        assert_eq!(back, msg);
    }
    let _ = decode_frame::<HostMessage>(data);
    let mut reader = FrameReader::new();
    for chunk in data.chunks(7) {
        reader.push(chunk);
        loop {
            match reader.next_message::<HostMessage>() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
    if let Some(m) = sovereign_protocol::marker::Marker::parse(&String::from_utf8_lossy(data)) {
        let line = m.to_line();
        assert_eq!(
            sovereign_protocol::marker::Marker::parse(&line),
            Some(m),
            "a parsed marker prints back to the same marker"
        );
    }
});
