//! Arbitrary bytes on a device's `down` topic, then through the trust checks
//! the agent applies to what decodes.
#![no_main]
use drover_protocol::codec;
use drover_protocol::messages::Down;
use drover_protocol::testkit::TestKeys;
use drover_protocol::topic::Channel;
use drover_protocol::{DeviceId, Sign, Timestamp, TrustState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = codec::decode_down(data, Channel::Down) else {
        return;
    };
    let keys = TestKeys::new(9);
    let Ok(device) = DeviceId::new("dev-1") else {
        return;
    };
    let mut trust = TrustState::new(keys.root.public_key(), device);
    match msg {
        Down::Command(c) => {
            let _ = trust.accept_command(&c, Timestamp(0));
        }
        Down::KeyList(k) => {
            let _ = trust.handle_key_list(&k, Timestamp(0));
        }
        _ => {}
    }
});
