//! The controller's MQTT link: one rumqttc client (MQTT 3.1.1) whose event
//! loop is polled in its own task, and a dispatcher that decodes what
//! devices send and routes it (inventory, ingest queue, chunk server).
//!
//! The poll loop never awaits anything that needs the poll loop itself to
//! make progress: it hands messages on with `try_send` (counting drops) and
//! subscribes with `try_subscribe_many`. The device id always comes from
//! the topic, never from a payload, and an `up` message is routed only once
//! `fleet::uplink` has opened it with that device's registered key.

use std::time::Duration;

use drover_protocol::codec::{self, CodecError};
use drover_protocol::messages::{ChunkRequest, Up};
use drover_protocol::telemetry::TelemetryWindow;
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::{DeviceId, FleetId};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};

use crate::controller::Controller;
use crate::metrics::{Metrics, inc};

/// Room above the largest payload for MQTT headers and topics.
pub(crate) const PACKET_MARGIN: usize = 4096;
/// Incoming packets up to this size are read (and refused by the codec if
/// over the channel limit) rather than killing the connection.
pub(crate) const MAX_INCOMING_PACKET: usize = 2 * codec::MAX_PAYLOAD + PACKET_MARGIN;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// Credentials, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// TLS for an `mqtts://` broker.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A message off the wire, topic already checked.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) device: DeviceId,
    pub(crate) channel: Channel,
    pub(crate) payload: Vec<u8>,
}

/// Builds the client and its event loop.
pub(crate) fn client(s: &LinkSettings) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_INCOMING_PACKET, codec::MAX_PAYLOAD + PACKET_MARGIN);
    // Chunks are up to 256 KiB each: a short request queue and a moderate
    // in-flight window bound what waits in memory (~16 MiB + ~25 MiB) when
    // the broker is slower than the chunk rate cap.
    opts.set_inflight(100);
    opts.set_request_channel_capacity(64);
    if let Some((u, p)) = &s.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut el) = AsyncClient::new(opts, 64);
    el.network_options.set_tcp_nodelay(true);
    (client, el)
}

fn codec_kind(e: &CodecError) -> &'static str {
    match e {
        CodecError::Empty => "empty",
        CodecError::TooLarge { .. } => "too_large",
        CodecError::UnsupportedVersion { .. } => "unsupported_version",
        CodecError::Malformed(_) => "malformed",
        CodecError::TrailingBytes(_) => "trailing_bytes",
        CodecError::Encode(_) => "encode",
    }
}

/// Checks a publish's topic: a Drover `up` or `status` topic of our fleet.
pub(crate) fn accept_topic(
    fleet: &FleetId,
    topic: &str,
) -> Result<(DeviceId, Channel), &'static str> {
    let t = Topic::parse(topic).map_err(|_| "topic")?;
    if &t.fleet != fleet {
        return Err("topic_other_fleet");
    }
    match t.channel {
        Channel::Up | Channel::Status => Ok((t.device, t.channel)),
        Channel::Down | Channel::Chunk => Err("topic_wrong_channel"),
    }
}

/// Why a shared-subscription group name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "shared subscription group {0:?} must be 1..=64 characters of a-z, A-Z, 0-9, '_' or '-' (no '/', '+' or '#')"
)]
pub(crate) struct BadGroup(pub(crate) String);

/// Checks a `--mqtt-shared-group` name: it becomes a topic level.
pub(crate) fn check_group(group: &str) -> Result<(), BadGroup> {
    let ok = !group.is_empty()
        && group.len() <= 64
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(BadGroup(group.to_string()))
    }
}

/// The filter the controller reads device uplinks with: the fleet's `up`
/// topics, or with a group `$share/GROUP/…`, so that the broker hands each
/// uplink to one controller of the group (replicas). Status stays a plain
/// subscription: every replica keeps the inventory, and brokers do not send
/// retained messages to shared subscriptions.
pub(crate) fn up_filter(fleet: &FleetId, shared_group: Option<&str>) -> String {
    let plain = Topic::fleet_filter(fleet, Channel::Up);
    match shared_group {
        Some(g) => format!("$share/{g}/{plain}"),
        None => plain,
    }
}

/// What the link subscribes to: the fleet's topics, uplinks through a
/// shared-subscription group if one is set.
#[derive(Debug, Clone)]
pub(crate) struct LinkTopics {
    pub(crate) fleet: FleetId,
    pub(crate) shared_group: Option<String>,
}

/// Polls the event loop until shutdown; reconnects with capped backoff.
pub(crate) async fn poll_loop(
    mut el: EventLoop,
    client: AsyncClient,
    topics: LinkTopics,
    inbound: mpsc::Sender<Inbound>,
    ready: watch::Sender<bool>,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let LinkTopics {
        fleet,
        shared_group,
    } = topics;
    let filters = vec![
        SubscribeFilter::new(up_filter(&fleet, shared_group.as_deref()), QoS::AtLeastOnce),
        SubscribeFilter::new(
            Topic::fleet_filter(&fleet, Channel::Status),
            QoS::AtLeastOnce,
        ),
    ];
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.try_disconnect();
                return;
            }
            e = el.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!("connected to the MQTT broker; subscribing");
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(error = %e, "subscribing failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.send(true);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                inc(&metrics.mqtt_messages);
                match accept_topic(&fleet, &p.topic) {
                    Ok((device, channel)) => {
                        let msg = Inbound {
                            device,
                            channel,
                            payload: p.payload.to_vec(),
                        };
                        if inbound.try_send(msg).is_err() {
                            inc(&metrics.inbound_dropped);
                        }
                    }
                    Err(kind) => {
                        metrics.malformed(kind);
                        tracing::warn!(topic = %p.topic, kind, "refused a message on an unexpected topic");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = ready.send(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection error");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Decodes and routes inbound messages until the queue closes or shutdown.
pub(crate) async fn dispatcher(
    ctrl: Controller,
    mut rx: mpsc::Receiver<Inbound>,
    ingest: mpsc::Sender<(DeviceId, TelemetryWindow)>,
    chunks: mpsc::Sender<(DeviceId, ChunkRequest)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = ctrl.metrics();
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let device = msg.device;
        // Only registered devices are heard at all; the rest are counted
        // and listed as unregistered.
        if ctrl.device_key(&device).is_none() {
            ctrl.seen_unregistered(&device);
            continue;
        }
        let result = match msg.channel {
            Channel::Status => match codec::decode_status(&msg.payload) {
                Ok(status) => ctrl.handle_status(device.clone(), status).await,
                Err(e) => {
                    metrics.malformed(codec_kind(&e));
                    tracing::warn!(%device, error = %e, "malformed status payload");
                    continue;
                }
            },
            _ => match ctrl.open_uplink(&device, &msg.payload).await {
                None => continue,
                Some(Up::Hello(h)) => ctrl.handle_hello(device.clone(), h).await,
                Some(Up::Ack(a)) => ctrl.handle_ack(device.clone(), a).await,
                Some(Up::DeployStatus(s)) => ctrl.handle_deploy_status(device.clone(), s).await,
                Some(Up::Telemetry(w)) => {
                    if ingest.try_send((device.clone(), w)).is_err() {
                        inc(&metrics.ingest_dropped);
                    }
                    Ok(())
                }
                Some(Up::ChunkRequest(r)) => match ctrl.download_in_flight(&device, r.sha256).await
                {
                    Ok(true) => {
                        if chunks.try_send((device.clone(), r)).is_err() {
                            inc(&metrics.chunk_requests_dropped);
                        }
                        Ok(())
                    }
                    Ok(false) => {
                        ctrl.refuse_uplink(
                            &device,
                            "chunk_not_in_flight",
                            format!(
                                "chunk request for {} with no deploy of it in flight",
                                r.sha256
                            ),
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Some(Up::Capture(c)) => {
                    if !ctrl.handle_capture(&device, &c) {
                        tracing::info!(%device, seq = c.seq, part = c.part, "capture upload with no retraining job waiting; dropped");
                    }
                    Ok(())
                }
                Some(Up::AgentUpdate(s)) => {
                    ctrl.handle_agent_update(device.clone(), s);
                    Ok(())
                }
                // `open_uplink` never returns a sealed message.
                Some(Up::Signed(_)) => continue,
            },
        };
        if let Err(e) = result {
            tracing::warn!(%device, error = %e, "handling a device message failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_up_and_status_topics_are_accepted() {
        let fleet = FleetId::new("plant").unwrap();
        assert_eq!(
            accept_topic(&fleet, "drover/plant/d/dev-1/up").unwrap(),
            (DeviceId::new("dev-1").unwrap(), Channel::Up)
        );
        assert!(accept_topic(&fleet, "drover/plant/d/dev-1/status").is_ok());
        assert_eq!(
            accept_topic(&fleet, "drover/other/d/dev-1/up"),
            Err("topic_other_fleet")
        );
        assert_eq!(
            accept_topic(&fleet, "drover/plant/d/dev-1/down"),
            Err("topic_wrong_channel")
        );
        assert_eq!(accept_topic(&fleet, "drover/plant/d/Dev/up"), Err("topic"));
        assert_eq!(accept_topic(&fleet, "random"), Err("topic"));
    }
}
