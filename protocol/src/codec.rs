//! The payload codec: one protocol-version byte, then postcard.
//!
//! Decoding refuses oversized input before parsing, refuses trailing bytes,
//! and never panics on arbitrary input (property-tested and fuzzed).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::messages::{Down, Status, Up};
use crate::topic::Channel;

/// Version byte leading every payload.
pub const PROTOCOL_VERSION: u8 = 1;

pub use crate::limits::{
    MAX_CHUNK_DATA, MAX_CHUNK_PAYLOAD, MAX_DOWN_PAYLOAD, MAX_PAYLOAD, MAX_STATUS_PAYLOAD,
    MAX_UP_PAYLOAD,
};

/// Why bytes could not be decoded (or a value encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Zero-length payload.
    #[error("empty payload")]
    Empty,
    /// Bigger than the channel allows.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Version byte this build does not speak.
    #[error("protocol version {got} not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The byte received.
        got: u8,
    },
    /// The body is not a valid message.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A valid message followed by junk.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The value could not be encoded, or is too large for its channel.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Encodes `msg` with the version byte, refusing results above `max`.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let out = postcard::to_extend(msg, vec![PROTOCOL_VERSION])
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > max {
        return Err(CodecError::Encode(format!(
            "{} bytes exceeds the {max}-byte limit",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a versioned payload of at most `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion { got: version });
    }
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Encodes an [`Up`] message.
pub fn encode_up(msg: &Up) -> Result<Vec<u8>, CodecError> {
    encode(msg, MAX_UP_PAYLOAD)
}
/// Decodes an `up` payload.
pub fn decode_up(bytes: &[u8]) -> Result<Up, CodecError> {
    decode(bytes, MAX_UP_PAYLOAD)
}
/// Encodes a [`Status`].
pub fn encode_status(msg: &Status) -> Result<Vec<u8>, CodecError> {
    encode(msg, MAX_STATUS_PAYLOAD)
}
/// Decodes a `status` payload.
pub fn decode_status(bytes: &[u8]) -> Result<Status, CodecError> {
    decode(bytes, MAX_STATUS_PAYLOAD)
}
/// Encodes a [`Down`] message for its channel ([`Down::Chunk`] goes on `chunk`).
pub fn encode_down(msg: &Down) -> Result<Vec<u8>, CodecError> {
    encode(msg, down_channel(msg).max_payload())
}
/// Decodes a `down` or `chunk` payload, with that channel's limit.
pub fn decode_down(bytes: &[u8], channel: Channel) -> Result<Down, CodecError> {
    decode(bytes, channel.max_payload())
}

/// The channel a [`Down`] message travels on.
pub fn down_channel(msg: &Down) -> Channel {
    match msg {
        Down::Chunk(_) => Channel::Chunk,
        _ => Channel::Down,
    }
}
