//! The fleet: device inventory and credentials, signed commands, the MQTT
//! link and broker, and the artifact chunk server.
//!
//! - [`devices`]: inventory rows, credentials, agent bundles, Mosquitto
//!   password/ACL files.
//! - `commands`: signed commands with per-device sequences, deploys, and
//!   the handlers for Hello/status/Ack/DeployStatus.
//! - `link`: the MQTT client (rumqttc) and the inbound dispatcher.
//! - [`broker`]: the embedded rumqttd broker and `--broker` parsing.
//! - `gate`: the authenticating, topic-confining MQTT listener in front of
//!   the embedded broker.
//! - `credentials`: device password hashes, their check and upgrade.
//! - [`fleet_ca`]: the fleet CA (broker server and device client certificates).
//! - `artifacts`: the rate-capped, fair chunk server.
//! - [`uplink`]: registered device keys, opening signed uplinks (replay,
//!   clock skew, rate limits), unregistered sightings.

pub(crate) mod artifacts;
pub mod broker;
pub(crate) mod commands;
pub mod credentials;
pub mod devices;
pub mod fleet_ca;
pub mod gate;
pub(crate) mod link;
pub(crate) mod mqtt_tls;
pub mod uplink;
