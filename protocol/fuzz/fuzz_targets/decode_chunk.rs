//! Arbitrary bytes on a device's `chunk` topic (the largest payloads).
#![no_main]
use drover_protocol::topic::Channel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = drover_protocol::codec::decode_down(data, Channel::Chunk);
});
