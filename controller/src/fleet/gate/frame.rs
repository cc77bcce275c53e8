//! MQTT 3.1.1 framing for the broker gate: just enough to read the fixed
//! header, CONNECT, PUBLISH topics and SUBSCRIBE filters, and to write a
//! CONNACK and a rewritten CONNECT. No sockets here: callers hand in bytes.
//!
//! Nothing read from the wire is trusted: every length is checked against
//! the bytes present and against the gate's packet limit before use.

/// MQTT control packet types the gate cares about (upper nibble of byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    Unsubscribe,
    PingReq,
    Disconnect,
    /// A type a client never sends (CONNACK, SUBACK, ...) or a reserved one.
    Other(u8),
}

impl Kind {
    fn from_nibble(n: u8) -> Kind {
        match n {
            1 => Kind::Connect,
            3 => Kind::Publish,
            4 => Kind::PubAck,
            5 => Kind::PubRec,
            6 => Kind::PubRel,
            7 => Kind::PubComp,
            8 => Kind::Subscribe,
            10 => Kind::Unsubscribe,
            12 => Kind::PingReq,
            14 => Kind::Disconnect,
            other => Kind::Other(other),
        }
    }
}

/// Why bytes from a client are not an acceptable MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The remaining-length field runs past four bytes.
    #[error("remaining length longer than 4 bytes")]
    BadLength,
    /// The packet is larger than the gate accepts.
    #[error("packet of {size} bytes over the {limit}-byte limit")]
    TooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A field runs past the end of the packet, or a flag is invalid.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

impl FrameError {
    /// Counter label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FrameError::BadLength => "bad_length",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Malformed(_) => "malformed",
        }
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    /// Lower nibble of byte 0.
    pub(crate) flags: u8,
    /// Bytes of the fixed header itself (2..=5).
    pub(crate) header_len: usize,
    /// Bytes after the fixed header.
    pub(crate) remaining: usize,
}

/// Parses a fixed header from the start of `buf`. `Ok(None)`: more bytes
/// are needed. A declared size over `limit` is refused before its body is read.
pub(crate) fn header(buf: &[u8], limit: usize) -> Result<Option<Header>, FrameError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let header_len = 2 + i;
            if remaining.saturating_add(header_len) > limit {
                return Err(FrameError::TooLarge {
                    size: remaining.saturating_add(header_len),
                    limit,
                });
            }
            return Ok(Some(Header {
                kind: Kind::from_nibble(b0 >> 4),
                flags: b0 & 0x0f,
                header_len,
                remaining,
            }));
        }
    }
    Err(FrameError::BadLength)
}

/// A cursor over a packet body that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(FrameError::Malformed(self.what))?;
        self.buf = rest;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = usize::from(self.u16()?);
        if n > self.buf.len() {
            return Err(FrameError::Malformed(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn string(&mut self) -> Result<&'a str, FrameError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| FrameError::Malformed(self.what))
    }
}

/// The will of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) message: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

/// A CONNECT packet's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    /// Protocol level: 4 is MQTT 3.1.1, the only one the gate forwards.
    pub(crate) level: u8,
    pub(crate) clean_session: bool,
    pub(crate) keep_alive: u16,
    pub(crate) client_id: String,
    pub(crate) will: Option<Will>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Vec<u8>>,
}

/// Parses a CONNECT body (after the fixed header).
pub(crate) fn connect(body: &[u8]) -> Result<Connect, FrameError> {
    let mut r = Reader {
        buf: body,
        what: "CONNECT",
    };
    let name = r.string()?;
    let level = r.u8()?;
    if name != "MQTT" && name != "MQIsdp" {
        return Err(FrameError::Malformed("CONNECT protocol name"));
    }
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(FrameError::Malformed("CONNECT reserved flag"));
    }
    let keep_alive = r.u16()?;
    let client_id = r.string()?.to_string();
    let will = if flags & 0x04 != 0 {
        let qos = (flags >> 3) & 0x03;
        if qos == 3 {
            return Err(FrameError::Malformed("CONNECT will QoS"));
        }
        Some(Will {
            topic: r.string()?.to_string(),
            message: r.bytes()?.to_vec(),
            qos,
            retain: flags & 0x20 != 0,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string()?.to_string())
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.bytes()?.to_vec())
    } else {
        None
    };
    if !r.buf.is_empty() {
        return Err(FrameError::Malformed("CONNECT trailing bytes"));
    }
    Ok(Connect {
        level,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn put_remaining(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Fields come from a parsed packet (u16 lengths) or from the gate's own
    // short credentials, so they always fit.
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(n)]);
}

/// Encodes a CONNECT (MQTT 3.1.1) for the internal broker.
pub(crate) fn encode_connect(c: &Connect) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put_bytes(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0u8;
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.clean_session {
        flags |= 0x02;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    put_bytes(&mut body, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_bytes(&mut body, w.topic.as_bytes());
        put_bytes(&mut body, &w.message);
    }
    if let Some(u) = &c.username {
        put_bytes(&mut body, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_bytes(&mut body, p);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0x10);
    put_remaining(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 0x01.
    ProtocolVersion = 1,
    /// 0x02.
    IdentifierRejected = 2,
    /// 0x04.
    BadCredentials = 4,
    /// 0x05.
    NotAuthorized = 5,
}

/// A CONNACK refusing the connection.
pub(crate) fn connack(code: Refusal) -> [u8; 4] {
    [0x20, 0x02, 0x00, code as u8]
}

/// The topic of a PUBLISH body; `flags` is the fixed header's lower nibble.
pub(crate) fn publish_topic(flags: u8, body: &[u8]) -> Result<&str, FrameError> {
    if (flags >> 1) & 0x03 == 3 {
        return Err(FrameError::Malformed("PUBLISH QoS"));
    }
    let mut r = Reader {
        buf: body,
        what: "PUBLISH",
    };
    r.string()
}

/// The topic filters of a SUBSCRIBE (or, with `with_qos` false, an
/// UNSUBSCRIBE) body. At least one filter, as the spec requires.
pub(crate) fn filters(body: &[u8], with_qos: bool) -> Result<Vec<&str>, FrameError> {
    let mut r = Reader {
        buf: body,
        what: "SUBSCRIBE",
    };
    let _packet_id = r.u16()?;
    let mut out = Vec::new();
    while !r.buf.is_empty() {
        out.push(r.string()?);
        if with_qos && r.u8()? > 2 {
            return Err(FrameError::Malformed("SUBSCRIBE QoS"));
        }
    }
    if out.is_empty() {
        return Err(FrameError::Malformed("SUBSCRIBE without filters"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Connect {
        Connect {
            level: 4,
            clean_session: true,
            keep_alive: 30,
            client_id: "drover-f-dev-1".into(),
            will: Some(Will {
                topic: "drover/f/d/dev-1/status".into(),
                message: vec![1, 2, 3],
                qos: 1,
                retain: true,
            }),
            username: Some("dev-1".into()),
            password: Some(b"pw".to_vec()),
        }
    }

    #[test]
    fn connect_round_trips() {
        let c = sample();
        let bytes = encode_connect(&c);
        let h = header(&bytes, 1024).unwrap().unwrap();
        assert_eq!(h.kind, Kind::Connect);
        assert_eq!(h.header_len + h.remaining, bytes.len());
        assert_eq!(connect(&bytes[h.header_len..]).unwrap(), c);
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(header(&[0x30], 10).unwrap(), None);
        assert_eq!(header(&[0x30, 0x80], 10).unwrap(), None);
        assert_eq!(
            header(&[0x30, 0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(FrameError::BadLength)
        );
        assert!(matches!(
            header(&[0x30, 0xff, 0xff, 0xff, 0x7f], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        let h = header(&[0x30, 0x05], 10).unwrap().unwrap();
        assert_eq!((h.kind, h.header_len, h.remaining), (Kind::Publish, 2, 5));
    }

    #[test]
    fn truncated_fields_are_malformed_not_panics() {
        let bytes = encode_connect(&sample());
        let body = &bytes[2..];
        for cut in 0..body.len() {
            assert!(connect(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(publish_topic(0, &[0x00, 0x09, b'a']).is_err());
        assert!(publish_topic(0b0110, &[0x00, 0x01, b'a']).is_err());
        assert!(filters(&[0x00, 0x01], true).is_err());
        assert!(filters(&[0x00, 0x01, 0x00, 0x01, b'a'], true).is_err());
        assert_eq!(
            filters(&[0x00, 0x01, 0x00, 0x01, b'a', 0x01], true).unwrap(),
            vec!["a"]
        );
        assert_eq!(
            filters(&[0x00, 0x01, 0x00, 0x01, b'a'], false).unwrap(),
            vec!["a"]
        );
    }
}
