//! Arbitrary bytes on an agent's `up` topic: must decode or give a typed error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = drover_protocol::codec::decode_up(data) {
        // What decodes must re-encode: the controller echoes parts of it.
        let _ = drover_protocol::codec::encode_up(&msg);
    }
});
