//! MQTT topics: typed build and parse. Anything that is not one of the four
//! Drover topics is refused.
//!
//! ```text
//! drover/{fleet}/d/{device}/up       agent -> controller
//! drover/{fleet}/d/{device}/status   agent -> controller (retained; last will)
//! drover/{fleet}/d/{device}/down     controller -> agent
//! drover/{fleet}/d/{device}/chunk    controller -> agent
//! ```

use std::fmt;

use crate::ids::{DeviceId, FleetId, IdError};

/// Root segment of every Drover topic.
pub const ROOT: &str = "drover";

/// The four per-device channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Agent to controller: Hello, Ack, DeployStatus, Telemetry, ChunkRequest, Capture.
    Up,
    /// Agent to controller, retained; the last will says Offline.
    Status,
    /// Controller to agent: signed commands, key lists, telemetry acks.
    Down,
    /// Controller to agent: model artifact chunks.
    Chunk,
}

impl Channel {
    /// All channels.
    pub const ALL: [Channel; 4] = [Channel::Up, Channel::Status, Channel::Down, Channel::Chunk];

    /// The last topic segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Up => "up",
            Channel::Status => "status",
            Channel::Down => "down",
            Channel::Chunk => "chunk",
        }
    }

    fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Largest payload accepted on this channel, in bytes. Decoders refuse
    /// anything bigger before looking inside.
    pub fn max_payload(self) -> usize {
        match self {
            Channel::Up => crate::limits::MAX_UP_PAYLOAD,
            Channel::Status => crate::limits::MAX_STATUS_PAYLOAD,
            Channel::Down => crate::limits::MAX_DOWN_PAYLOAD,
            Channel::Chunk => crate::limits::MAX_CHUNK_PAYLOAD,
        }
    }
}

/// A parsed Drover topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// Fleet segment.
    pub fleet: FleetId,
    /// Device segment.
    pub device: DeviceId,
    /// Channel segment.
    pub channel: Channel,
}

/// Why a topic string is not a Drover topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not `drover/{fleet}/d/{device}/{channel}`.
    #[error("topic {0:?} does not have the shape drover/FLEET/d/DEVICE/CHANNEL")]
    Shape(String),
    /// The last segment is not up, status, down or chunk.
    #[error("unknown channel {0:?}")]
    Channel(String),
    /// The fleet or device segment is not a valid id.
    #[error("bad id in topic: {0}")]
    Id(#[from] IdError),
}

impl Topic {
    /// Builds a topic.
    pub fn new(fleet: &FleetId, device: &DeviceId, channel: Channel) -> Topic {
        Topic {
            fleet: fleet.clone(),
            device: device.clone(),
            channel,
        }
    }

    /// Parses a topic string, refusing everything that is not a Drover topic.
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        let mut parts = s.split('/');
        let (Some(root), Some(fleet), Some(d), Some(device), Some(channel), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TopicError::Shape(s.to_string()));
        };
        if root != ROOT || d != "d" {
            return Err(TopicError::Shape(s.to_string()));
        }
        let channel = Channel::parse(channel).ok_or_else(|| TopicError::Channel(channel.into()))?;
        Ok(Topic {
            fleet: FleetId::new(fleet)?,
            device: DeviceId::new(device)?,
            channel,
        })
    }

    /// Subscription filter for one channel of every device of a fleet
    /// (what the controller subscribes to).
    pub fn fleet_filter(fleet: &FleetId, channel: Channel) -> String {
        format!("{ROOT}/{fleet}/d/+/{}", channel.as_str())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ROOT}/{}/d/{}/{}",
            self.fleet,
            self.device,
            self.channel.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (FleetId, DeviceId) {
        (
            FleetId::new("prod").unwrap(),
            DeviceId::new("dev-1").unwrap(),
        )
    }

    #[test]
    fn build_and_parse_round_trip() {
        let (f, d) = ids();
        for c in Channel::ALL {
            let t = Topic::new(&f, &d, c);
            let s = t.to_string();
            assert_eq!(Topic::parse(&s).unwrap(), t);
        }
        assert_eq!(
            Topic::new(&f, &d, Channel::Up).to_string(),
            "drover/prod/d/dev-1/up"
        );
        assert_eq!(
            Topic::fleet_filter(&f, Channel::Status),
            "drover/prod/d/+/status"
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "drover",
            "drover/prod/d/dev-1",
            "drover/prod/d/dev-1/up/extra",
            "other/prod/d/dev-1/up",
            "drover/prod/x/dev-1/up",
            "drover/prod/d/+/up",
            "drover/prod/d/#",
            "drover/Prod/d/dev-1/up",
            "drover//d/dev-1/up",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(matches!(
            Topic::parse("drover/prod/d/dev-1/sideways"),
            Err(TopicError::Channel(_))
        ));
    }
}
