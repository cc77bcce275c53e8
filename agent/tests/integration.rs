//! The agent against a real broker (embedded rumqttd, Mosquitto when
//! `DROVER_TEST_BROKER` is set or a test needs to stop the broker) and real
//! tract on the committed fixtures, driven by a scripted controller peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cases;
mod support;
