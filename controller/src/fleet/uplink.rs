//! The controller's side of device identity: which devices are registered
//! (and with which public key), opening their signed uplinks, the
//! [`UplinkGuard`] (replay, freshness, rate) around them, and the bounded
//! list of unregistered devices seen on the broker.
//!
//! Nothing a device says is taken on its word: an uplink is routed only if
//! it is sealed by the key registered for the device named by the TOPIC,
//! with a counter the guard accepts. Everything else is counted by kind
//! (`drover_uplinks_refused_total`) and logged at most once per device per
//! minute.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::sync::{Mutex, MutexGuard, RwLock};

use drover_protocol::codec::{self, CodecError};
use drover_protocol::messages::Up;
use drover_protocol::uplink;
use drover_protocol::{DeviceId, PublicKey, Timestamp};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::controller::{Controller, lock_read, lock_write};
use crate::core::uplink::{UplinkGuard, UplinkPolicy};
use crate::db::DbError;

/// Unregistered devices remembered at most (the oldest sighting goes).
const MAX_UNREGISTERED: usize = 1024;

/// A device id seen on the broker that was never added with `drover device
/// add`: shown by `drover devices --unregistered`, never selectable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnregisteredDevice {
    /// Device id from the topic.
    pub id: String,
    /// First message (ms).
    pub first_seen: u64,
    /// Latest message (ms).
    pub last_seen: u64,
    /// Messages refused from it.
    pub messages: u64,
}

/// Registered keys, the guard and the unregistered sightings.
#[derive(Debug)]
pub(crate) struct Identity {
    keys: RwLock<HashMap<DeviceId, PublicKey>>,
    guard: Mutex<UplinkGuard>,
    unregistered: Mutex<BTreeMap<DeviceId, UnregisteredDevice>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Identity {
    /// Loads every registered device's key and uplink position.
    pub(crate) fn load(
        conn: &rusqlite::Connection,
        policy: UplinkPolicy,
        now: Timestamp,
    ) -> Result<Identity, DbError> {
        let mut stmt = conn.prepare(
            "SELECT id, device_key, uplink_counter, clock_offset_us FROM devices
             WHERE registered = 1 AND device_key IS NOT NULL",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = HashMap::new();
        let mut guard = UplinkGuard::new(policy);
        for (id, key, counter, offset) in rows {
            let (Ok(id), Ok(key)) = (DeviceId::new(id), PublicKey::from_hex(&key)) else {
                return Err(DbError::Corrupt(
                    "a device row holds a bad id or key".into(),
                ));
            };
            guard.restore(&id, counter as u64, offset, now);
            keys.insert(id, key);
        }
        Ok(Identity {
            keys: RwLock::new(keys),
            guard: Mutex::new(guard),
            unregistered: Mutex::new(BTreeMap::new()),
        })
    }
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

impl Controller {
    fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The public key registered for `device`, if it is registered.
    pub fn device_key(&self, device: &DeviceId) -> Option<PublicKey> {
        lock_read(&self.identity().keys).get(device).copied()
    }

    /// Records a newly registered key (a new key starts a new counter).
    pub(crate) fn set_device_key(&self, device: &DeviceId, key: PublicKey) {
        lock_write(&self.identity().keys).insert(device.clone(), key);
        lock(&self.identity().guard).forget(device);
        lock(&self.identity().unregistered).remove(device);
    }

    /// Unregistered devices seen on the broker, by id.
    pub fn unregistered_devices(&self) -> Vec<UnregisteredDevice> {
        lock(&self.identity().unregistered)
            .values()
            .cloned()
            .collect()
    }

    /// Counts a refusal and logs it at most once per device per minute.
    pub(crate) fn refuse_uplink(
        &self,
        device: &DeviceId,
        kind: &'static str,
        detail: impl Display,
    ) {
        self.inner.metrics.uplink_refused(kind);
        let now = self.now();
        if lock(&self.identity().guard).should_log(device, now) {
            tracing::warn!(%device, kind, %detail, "refused an uplink (logged once a minute per device)");
        }
    }

    /// Notes a message from a device that is not registered (or has no key).
    pub(crate) fn seen_unregistered(&self, device: &DeviceId) {
        let now = self.now().0;
        let mut map = lock(&self.identity().unregistered);
        if !map.contains_key(device) && map.len() >= MAX_UNREGISTERED {
            let oldest = map
                .iter()
                .min_by_key(|(_, d)| d.last_seen)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let e = map
            .entry(device.clone())
            .or_insert_with(|| UnregisteredDevice {
                id: device.to_string(),
                first_seen: now,
                last_seen: now,
                messages: 0,
            });
        e.last_seen = now;
        e.messages += 1;
        drop(map);
        self.refuse_uplink(
            device,
            "unregistered",
            "device is not registered (drover device add)",
        );
    }

    /// Decodes and opens an `up` payload from `device` (the topic's device):
    /// `Some(inner)` only for a message sealed with the device's registered
    /// key whose counter the guard accepts.
    pub(crate) async fn open_uplink(&self, device: &DeviceId, payload: &[u8]) -> Option<Up> {
        let up = match codec::decode_up(payload) {
            Ok(up) => up,
            Err(e) => {
                self.inner.metrics.malformed(codec_kind(&e));
                self.refuse_uplink(device, "malformed", e);
                return None;
            }
        };
        let Some(key) = self.device_key(device) else {
            self.seen_unregistered(device);
            return None;
        };
        let Up::Signed(sealed) = up else {
            self.refuse_uplink(
                device,
                "unsigned",
                "uplink is not signed with the device key",
            );
            return None;
        };
        let inner = match uplink::open(&sealed, self.fleet(), device, &key) {
            Ok(inner) => inner,
            Err(e) => {
                self.refuse_uplink(device, e.kind(), e);
                return None;
            }
        };
        let now = self.now();
        let is_hello = matches!(inner, Up::Hello(_));
        let checked = lock(&self.identity().guard).check(device, sealed.counter, is_hello, now);
        let accepted = match checked {
            Ok(a) => a,
            Err(r) => {
                self.refuse_uplink(device, r.kind(), format!("{r:?}"));
                return None;
            }
        };
        if let Some(offset) = accepted.resynced_offset_us {
            crate::metrics::inc(&self.inner.metrics.uplink_clock_resyncs);
            tracing::info!(%device, offset_ms = offset / 1000, "device clock offset re-learned from its Hello");
        }
        // Telemetry (deduplicated by sequence) and chunk requests (answered
        // only to the device, only while a deploy is in flight) are harmless
        // to replay across a controller restart; everything else moves the
        // persisted position so a restart does not reopen old counters.
        let position = lock(&self.identity().guard).position(device);
        if !matches!(inner, Up::Telemetry(_) | Up::ChunkRequest(_))
            && let Some((counter, offset)) = position
        {
            let id = device.to_string();
            let r = self
                .db()
                .call(move |c| {
                    c.execute(
                        "UPDATE devices SET uplink_counter = MAX(uplink_counter, ?2), clock_offset_us = ?3
                         WHERE id = ?1",
                        params![id, counter as i64, offset],
                    )?;
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(%device, error = %e, "persisting the uplink counter failed");
            }
        }
        Some(inner)
    }
}
