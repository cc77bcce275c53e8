//! Arbitrary topic strings: only the four Drover topics parse.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(t) = drover_protocol::topic::Topic::parse(s)
    {
        // Whatever parses must print back to the same string.
        assert_eq!(t.to_string(), s);
    }
});
