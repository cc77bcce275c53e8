//! Arbitrary bytes on a `status` topic (retained messages, last wills).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = drover_protocol::codec::decode_status(data);
});
