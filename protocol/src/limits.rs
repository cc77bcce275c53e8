//! Payload size limits per channel, in bytes. Their own module so both the
//! codec (which enforces them) and the topics (which name the channels)
//! depend on them without depending on each other.

/// Largest `up` payload: capture uploads are split to stay under this.
pub const MAX_UP_PAYLOAD: usize = 256 * 1024;
/// Largest `status` payload.
pub const MAX_STATUS_PAYLOAD: usize = 4 * 1024;
/// Largest `down` payload: commands carry a signed manifest with its reference
/// profile and health-check samples.
pub const MAX_DOWN_PAYLOAD: usize = 256 * 1024;
/// Largest artifact bytes in one chunk.
pub const MAX_CHUNK_DATA: usize = 256 * 1024;
/// Largest `chunk` payload: [`MAX_CHUNK_DATA`] plus envelope.
pub const MAX_CHUNK_PAYLOAD: usize = MAX_CHUNK_DATA + 1024;
/// The largest payload on any channel; MQTT clients size `max_packet_size` from it.
pub const MAX_PAYLOAD: usize = MAX_CHUNK_PAYLOAD;
