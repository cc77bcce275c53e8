//! The fleet: device inventory and credentials, signed commands, the MQTT
//! link and broker, and the artifact chunk server.
//!
//! - [`devices`]: inventory rows, credentials, agent bundles, Mosquitto
//!   password/ACL files.
//! - `commands`: signed commands with per-device sequences, deploys, and
//!   the handlers for Hello/status/Ack/DeployStatus.
//! - `link`: the MQTT client (rumqttc) and the inbound dispatcher.
//! - [`broker`]: the embedded rumqttd broker and `--broker` parsing.
//! - `artifacts`: the rate-capped, fair chunk server.
//! - [`uplink`]: registered device keys, opening signed uplinks (replay,
//!   clock skew, rate limits), unregistered sightings.

pub(crate) mod artifacts;
pub mod broker;
pub(crate) mod commands;
pub mod devices;
pub(crate) mod link;
pub mod uplink;
