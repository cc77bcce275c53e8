//! The embedded MQTT broker (rumqttd, MQTT 3.1.1 only) and the `--broker`
//! URL parser.
//!
//! rumqttd listens on an internal loopback port that only the controller
//! knows and accepts only the internal credential: devices reach it through
//! the gate (`fleet::gate`), which authenticates them and confines them to
//! their topics. rumqttd's `Broker::start()` blocks and has no stop, so it
//! runs on its own OS thread for the life of the process. It does not report
//! a taken port nicely, so the caller checks the port by binding it first.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Where the controller's MQTT traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Start rumqttd in-process, listening on this loopback address.
    Embedded {
        /// `--mqtt-listen`.
        listen: SocketAddr,
    },
    /// Use an external broker.
    External {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// `mqtts://`: TLS (see `--broker-ca`).
        tls: bool,
    },
}

/// Why the broker choice or the embedded broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// `--broker` is neither `embedded` nor `mqtt://HOST:PORT` / `mqtts://HOST:PORT`.
    #[error("bad --broker {0:?}: expected `embedded`, mqtt://HOST:PORT or mqtts://HOST:PORT")]
    BadUrl(String),
    /// The embedded broker's port is taken.
    #[error(
        "cannot start the embedded MQTT broker on {addr}: {source}. Another broker (or drover) is \
         using it: pick a free port with --mqtt-listen 127.0.0.1:PORT, or use that broker with \
         --broker mqtt://HOST:PORT"
    )]
    PortInUse {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// rumqttd did not come up.
    #[error("the embedded MQTT broker did not start on {0} (see --broker and --mqtt-listen)")]
    NotListening(SocketAddr),
}

impl BrokerChoice {
    /// Parses `--broker` (`embedded` uses `listen`).
    pub fn parse(broker: &str, listen: SocketAddr) -> Result<BrokerChoice, BrokerError> {
        if broker == "embedded" {
            return Ok(BrokerChoice::Embedded { listen });
        }
        let (rest, tls) = match broker.strip_prefix("mqtts://") {
            Some(r) => (r, true),
            None => (
                broker
                    .strip_prefix("mqtt://")
                    .or_else(|| broker.strip_prefix("tcp://"))
                    .ok_or_else(|| BrokerError::BadUrl(broker.into()))?,
                false,
            ),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| BrokerError::BadUrl(broker.into()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| BrokerError::BadUrl(broker.into()))?;
        if host.is_empty() || port == 0 {
            return Err(BrokerError::BadUrl(broker.into()));
        }
        Ok(BrokerChoice::External {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            tls,
        })
    }
}

/// Binds `addr` and releases it: fails with [`BrokerError::PortInUse`] if
/// taken; returns the concrete address (port 0 resolved).
pub fn reserve(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let l = TcpListener::bind(addr).map_err(|source| BrokerError::PortInUse { addr, source })?;
    l.local_addr()
        .map_err(|source| BrokerError::PortInUse { addr, source })
}

/// The credential the gate and the controller's own client use on the
/// internal port; fresh random per start, never written anywhere.
#[derive(Clone)]
pub(crate) struct InternalCredential {
    pub(crate) username: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for InternalCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCredential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl InternalCredential {
    /// A new random credential.
    pub(crate) fn generate() -> Result<InternalCredential, getrandom::Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        Ok(InternalCredential {
            username: "drover-internal".into(),
            password: hex::encode(raw),
        })
    }
}

/// rumqttd settings: MQTT 3.1.1 only, payloads up to the link's packet
/// limit, only the internal credential.
fn config(listen: SocketAddr, internal: &InternalCredential) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: crate::fleet::link::MAX_INCOMING_PACKET,
        max_inflight_count: 500,
        auth: Some(HashMap::from([(
            internal.username.clone(),
            internal.password.clone(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let mut v4 = HashMap::new();
    v4.insert(
        "v4-1".to_string(),
        ServerSettings {
            name: "v4-1".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        },
    );
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(v4),
        ..Config::default()
    }
}

/// Starts rumqttd on the internal address `listen` on its own thread.
pub(crate) fn start_embedded(
    listen: SocketAddr,
    internal: &InternalCredential,
) -> Result<(), BrokerError> {
    let addr = reserve(listen)?;
    let cfg = config(addr, internal);
    std::thread::Builder::new()
        .name("drover-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|_| BrokerError::NotListening(addr))?;
    // No probe connection here (rumqttd logs those as errors): the link
    // retries until the broker listens, and startup waits for its SubAck.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        let l: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(
            BrokerChoice::parse("embedded", l).unwrap(),
            BrokerChoice::Embedded { listen: l }
        );
        assert_eq!(
            BrokerChoice::parse("mqtt://broker.local:1884", l).unwrap(),
            BrokerChoice::External {
                host: "broker.local".into(),
                port: 1884,
                tls: false,
            }
        );
        assert_eq!(
            BrokerChoice::parse("mqtts://broker.local:8883", l).unwrap(),
            BrokerChoice::External {
                host: "broker.local".into(),
                port: 8883,
                tls: true,
            }
        );
        for bad in [
            "",
            "http://x:1",
            "mqtt://x",
            "mqtt://:1883",
            "mqtt://x:0",
            "mqtt://x:http",
        ] {
            assert!(BrokerChoice::parse(bad, l).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn taken_port_names_the_flags() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = reserve(l.local_addr().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("--mqtt-listen") && err.contains("--broker"),
            "{err}"
        );
    }
}
