//! Arbitrary signed envelopes: verification and body decoding of every
//! signed type must refuse cleanly.
#![no_main]
use drover_protocol::manifest::ModelManifest;
use drover_protocol::testkit::TestKeys;
use drover_protocol::trust::KeyList;
use drover_protocol::{Command, Sign, Signed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = TestKeys::new(9);
    let m: Signed<ModelManifest> = Signed::sign_bytes(data.to_vec(), &keys.models);
    let _ = m.verify(&keys.models.public_key());
    let c: Signed<Command> = Signed::sign_bytes(data.to_vec(), &keys.commands);
    let _ = c.verify(&keys.commands.public_key());
    let k: Signed<KeyList> = Signed::sign_bytes(data.to_vec(), &keys.root);
    let _ = k.verify(&keys.root.public_key());
});
