//! Device inventory: label selectors, the device rows (from `device add`,
//! Hello, status and last will), per-device credentials, the agent config
//! bundle and the Mosquitto password + ACL files.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use drover_protocol::messages::Hello;
use drover_protocol::{DeviceId, FleetId, ModelRef, Timestamp};
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// The latest deploy report of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    /// Command sequence it answers (0 = the agent's own guard).
    pub seq: u64,
    /// Model concerned.
    pub model: String,
    /// Phase word (`downloading`, `active`, `failed`, ...).
    pub phase: String,
    /// Bytes held (downloading).
    pub received: u64,
    /// Artifact size (downloading).
    pub total: u64,
    /// Why, for failures and rollbacks.
    pub reason: Option<String>,
    /// When reported (ms).
    pub at: u64,
}

/// One device, as the inventory knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device id (from the topic).
    pub id: String,
    /// Added with `drover device add` (false: seen on the broker only).
    pub registered: bool,
    /// Connected, per its status topic / last will.
    pub online: bool,
    /// Last message (ms since epoch).
    pub last_seen: Option<u64>,
    /// Labels from the registry (`drover device add --labels`, `drover
    /// device label`); what the agent reports is never used.
    pub labels: BTreeMap<String, String>,
    /// Hardware class.
    pub hardware: Option<String>,
    /// CPU architecture.
    pub arch: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Serving model.
    pub active: Option<String>,
    /// Rollback model.
    pub previous: Option<String>,
    /// Shadow candidate.
    pub shadow: Option<String>,
    /// Last command sequence the device accepted (from Hello).
    pub reported_seq: u64,
    /// Last command sequence the controller issued.
    pub issued_seq: u64,
    /// Key list version installed on the device.
    pub key_list_version: u64,
    /// Telemetry windows waiting in the device's outbox.
    pub outbox_depth: u64,
    /// Latest deploy report.
    pub deploy: Option<DeployReport>,
}

pub(crate) const DEVICE_COLUMNS: &str = "id, registered, reg_labels, labels, hardware, arch, agent_version, \
     active, previous, shadow, reported_seq, issued_seq, key_list_version, outbox_depth, online, \
     last_seen, deploy_state";

pub(crate) fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceInfo> {
    let reg: String = r.get(2)?;
    let labels: BTreeMap<String, String> = serde_json::from_str(&reg).unwrap_or_default();
    let deploy: Option<String> = r.get(16)?;
    Ok(DeviceInfo {
        id: r.get(0)?,
        registered: r.get::<_, i64>(1)? != 0,
        labels,
        hardware: r.get(4)?,
        arch: r.get(5)?,
        agent_version: r.get(6)?,
        active: r.get(7)?,
        previous: r.get(8)?,
        shadow: r.get(9)?,
        reported_seq: r.get::<_, i64>(10)? as u64,
        issued_seq: r.get::<_, i64>(11)? as u64,
        key_list_version: r.get::<_, i64>(12)? as u64,
        outbox_depth: r.get::<_, i64>(13)? as u64,
        online: r.get::<_, i64>(14)? != 0,
        last_seen: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
        deploy: deploy.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

/// All devices, by id.
pub(crate) fn load_all(conn: &rusqlite::Connection) -> Result<Vec<DeviceInfo>, DbError> {
    let mut stmt = conn.prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))?;
    let rows = stmt
        .query_map([], device_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// One device.
pub(crate) fn load_one(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<Option<DeviceInfo>, DbError> {
    Ok(conn
        .query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
            params![id],
            device_from_row,
        )
        .optional()?)
}

/// True if `model` (`name@version`) exists in the registry and a deploy or
/// shadow command for it was sent to `device`: the only models a device's
/// report may name as serving.
pub(crate) fn was_commanded(
    conn: &rusqlite::Connection,
    device: &str,
    model: &ModelRef,
) -> Result<bool, DbError> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM commands c JOIN models m ON m.name = ?3 AND m.version = ?4
             WHERE c.device = ?1 AND c.model = ?2 AND c.kind IN ('deploy', 'shadow') LIMIT 1",
            params![
                device,
                model.to_string(),
                model.name.as_str(),
                model.version.0 as i64
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

/// Records a registered device's Hello. Its labels are kept apart (never
/// matched by selectors), and a model slot is updated only to a model that
/// was commanded to it; returns how many slots named a model that was not.
pub(crate) fn apply_hello(
    conn: &rusqlite::Connection,
    id: &DeviceId,
    h: &Hello,
    now: Timestamp,
) -> Result<u32, DbError> {
    let mut refused = 0;
    let mut slot = |m: &Option<ModelRef>| -> Result<Option<Option<String>>, DbError> {
        match m {
            None => Ok(Some(None)),
            Some(m) if was_commanded(conn, id.as_str(), m)? => Ok(Some(Some(m.to_string()))),
            Some(_) => {
                refused += 1;
                Ok(None)
            }
        }
    };
    let (active, previous, shadow) = (slot(&h.active)?, slot(&h.previous)?, slot(&h.shadow)?);
    conn.execute(
        "UPDATE devices SET labels = ?2, hardware = ?3, arch = ?4, agent_version = ?5,
            active = CASE WHEN ?6 THEN ?7 ELSE active END,
            previous = CASE WHEN ?8 THEN ?9 ELSE previous END,
            shadow = CASE WHEN ?10 THEN ?11 ELSE shadow END,
            reported_seq = ?12, issued_seq = MAX(issued_seq, ?12),
            key_list_version = ?13, outbox_depth = ?14, online = 1, last_seen = ?15
         WHERE id = ?1 AND registered = 1",
        params![
            id.as_str(),
            serde_json::to_string(&h.labels).unwrap_or_else(|_| "{}".into()),
            h.hardware,
            h.arch,
            h.agent_version,
            active.is_some(),
            active.flatten(),
            previous.is_some(),
            previous.flatten(),
            shadow.is_some(),
            shadow.flatten(),
            h.last_command_seq as i64,
            h.key_list_version as i64,
            h.outbox_depth as i64,
            now.0 as i64
        ],
    )?;
    Ok(refused)
}

/// Records online/offline of a registered device. The status topic is not
/// signed (the broker publishes the last will), so it moves only the online
/// flag and the agent version, never the serving model.
pub(crate) fn apply_status(
    conn: &rusqlite::Connection,
    id: &DeviceId,
    online: Option<&str>,
    now: Timestamp,
) -> Result<(), DbError> {
    match online {
        Some(version) => conn.execute(
            "UPDATE devices SET online = 1, agent_version = ?2, last_seen = ?3
             WHERE id = ?1 AND registered = 1",
            params![id.as_str(), version, now.0 as i64],
        )?,
        None => conn.execute(
            "UPDATE devices SET online = 0, last_seen = ?2 WHERE id = ?1 AND registered = 1",
            params![id.as_str(), now.0 as i64],
        )?,
    };
    Ok(())
}

/// A generated MQTT password: 24 URL-safe characters (144 random bits).
pub fn generate_password() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 18];
    getrandom::fill(&mut raw)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Mosquitto's `$7$` hash (PBKDF2-SHA512, 12-byte salt) as `mosquitto_passwd
/// -I ITERATIONS` writes it; the controller stores and verifies the same
/// string (`fleet::credentials`). Slow on purpose: call it off the runtime.
pub fn mosquitto_hash(password: &str, iterations: u32) -> Result<String, getrandom::Error> {
    let mut salt = [0u8; 12];
    getrandom::fill(&mut salt)?;
    Ok(mosquitto_hash_with_salt(password, &salt, iterations))
}

/// [`mosquitto_hash`] with a given salt and iteration count (tests).
pub fn mosquitto_hash_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let hash = pbkdf2::pbkdf2_hmac_array::<sha2::Sha512, 64>(password.as_bytes(), salt, iterations);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${iterations}${}${}", b64.encode(salt), b64.encode(hash))
}

/// What `drover device add` writes. `agent_toml` is the agent's config
/// format (`drover_agent::config::AgentConfig`): the five required keys plus
/// credentials, labels and the loopback inference API address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBundle {
    /// Device id.
    pub device_id: String,
    /// Fleet.
    pub fleet: String,
    /// Broker URL the agent connects to.
    pub broker: String,
    /// MQTT username (= device id, so broker ACL patterns can use `%u`).
    pub username: String,
    /// MQTT password (shown once; only its hash is stored).
    pub password: String,
    /// Root public key the agent pins (hex).
    pub root_key: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The device's ed25519 signing key (hex seed; shown once, the
    /// controller keeps only the public half). Also in `agent_toml`.
    #[serde(default)]
    pub device_key: String,
    /// The agent config file, ready to write as `agent.toml`.
    pub agent_toml: String,
    /// TLS files to write next to `agent.toml` (`ca.pem`, `client.pem`,
    /// `client.key`); `agent_toml` names them.
    #[serde(default)]
    pub tls: BundleTls,
}

/// The TLS part of a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleTls {
    /// The broker's CA (PEM) the agent pins (`ca.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// A client certificate with CN = device id, from the fleet CA (`client.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// Its private key (`client.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
}

impl BundleTls {
    /// File names in the bundle directory and their contents.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(ca) = &self.ca_pem {
            out.push((BUNDLE_CA_FILE, ca.as_str()));
        }
        if let (Some(c), Some(k)) = (&self.client_cert_pem, &self.client_key_pem) {
            out.push((BUNDLE_CLIENT_CERT_FILE, c.as_str()));
            out.push((BUNDLE_CLIENT_KEY_FILE, k.as_str()));
        }
        out
    }
}

/// `ca.pem` in a bundle directory.
pub const BUNDLE_CA_FILE: &str = "ca.pem";
/// `client.pem` in a bundle directory.
pub const BUNDLE_CLIENT_CERT_FILE: &str = "client.pem";
/// `client.key` in a bundle directory.
pub const BUNDLE_CLIENT_KEY_FILE: &str = "client.key";

#[derive(Serialize)]
struct AgentToml<'a> {
    device_id: &'a str,
    fleet: &'a str,
    broker: &'a str,
    username: &'a str,
    password: &'a str,
    root_key: &'a str,
    data_dir: &'a str,
    api: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert_file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_file: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
}

/// Where the bundle tells the agent to keep its state: the same directory
/// the .deb creates and its systemd unit lets the agent write.
pub const AGENT_DATA_DIR: &str = "/var/lib/drover-agent";
/// Where the bundle tells the agent to serve its loopback inference API.
pub const AGENT_API: &str = "127.0.0.1:7070";

/// Builds the bundle (and its `agent.toml`).
pub fn bundle(
    device: &DeviceId,
    fleet: &FleetId,
    broker: &str,
    password: String,
    root_key: String,
    labels: BTreeMap<String, String>,
    tls: BundleTls,
) -> Result<DeviceBundle, toml::ser::Error> {
    let client = tls.client_cert_pem.is_some() && tls.client_key_pem.is_some();
    let body = toml::to_string(&AgentToml {
        device_id: device.as_str(),
        fleet: fleet.as_str(),
        broker,
        username: device.as_str(),
        password: &password,
        root_key: &root_key,
        data_dir: AGENT_DATA_DIR,
        api: AGENT_API,
        ca_file: tls.ca_pem.is_some().then_some(BUNDLE_CA_FILE),
        client_cert_file: client.then_some(BUNDLE_CLIENT_CERT_FILE),
        client_key_file: client.then_some(BUNDLE_CLIENT_KEY_FILE),
        labels: &labels,
    })?;
    let agent_toml = format!(
        "# Drover agent config for device {device} (written by `drover device add`).\n\
         # Run: drover-agent run --config agent.toml\n{body}"
    );
    Ok(DeviceBundle {
        device_id: device.to_string(),
        fleet: fleet.to_string(),
        broker: broker.to_string(),
        username: device.to_string(),
        password,
        root_key,
        labels,
        device_key: String::new(),
        agent_toml,
        tls,
    })
}

/// Puts the device's signing key (hex seed) into the bundle and its
/// `agent.toml` (among the top-level keys, before any table).
pub fn add_device_key(b: &mut DeviceBundle, seed_hex: &str) -> Result<(), toml::ser::Error> {
    #[derive(Serialize)]
    struct Key<'a> {
        device_key: &'a str,
    }
    let line = toml::to_string(&Key {
        device_key: seed_hex,
    })?;
    let at = b
        .agent_toml
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        .min(b.agent_toml.len());
    b.agent_toml.insert_str(at, &line);
    b.device_key = seed_hex.to_string();
    Ok(())
}

/// The Mosquitto password file and ACL for the registered devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerAcl {
    /// `password_file` contents (`user:$7$...` lines).
    pub password_file: String,
    /// `acl_file` contents.
    pub acl_file: String,
    /// How to use them.
    pub notes: String,
}

/// Builds the files: each device may write only its own `up`/`status` and
/// read only its own `down`/`chunk`; the controller user reads and writes
/// the whole fleet. `devices` are (id, `$7$` hash) pairs in id order.
pub fn broker_acl(
    fleet: &FleetId,
    devices: &[(String, String)],
    controller_user: &str,
    controller_hash: Option<&str>,
) -> BrokerAcl {
    let mut pw = String::new();
    match controller_hash {
        Some(h) => {
            let _ = writeln!(pw, "{controller_user}:{h}");
        }
        None => {
            let _ = writeln!(
                pw,
                "# {controller_user}: start `drover serve` with --username/--password to include its hash here,\n\
                 # or add it with: mosquitto_passwd -b passwd {controller_user} PASSWORD"
            );
        }
    }
    let mut acl = String::new();
    let _ = writeln!(
        acl,
        "# Drover fleet {fleet}: generated by `drover broker acl`."
    );
    let _ = writeln!(
        acl,
        "user {controller_user}\ntopic readwrite drover/{fleet}/#\n"
    );
    for (id, hash) in devices {
        let _ = writeln!(pw, "{id}:{hash}");
        let _ = writeln!(
            acl,
            "user {id}\n\
             topic write drover/{fleet}/d/{id}/up\n\
             topic write drover/{fleet}/d/{id}/status\n\
             topic read drover/{fleet}/d/{id}/down\n\
             topic read drover/{fleet}/d/{id}/chunk\n"
        );
    }
    BrokerAcl {
        password_file: pw,
        acl_file: acl,
        notes: "mosquitto.conf: allow_anonymous false / password_file /etc/mosquitto/drover.passwd / \
                acl_file /etc/mosquitto/drover.acl; hashes are $7$ (PBKDF2-SHA512) as mosquitto_passwd writes"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_hash_matches_known_vector() {
        // PBKDF2-HMAC-SHA512 test vector (RFC 6070 style, 1 iteration).
        let h = mosquitto_hash_with_salt("password", b"salt", 1);
        let b64 = base64::engine::general_purpose::STANDARD;
        let expected = hex::decode(
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
             c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce",
        )
        .unwrap();
        assert_eq!(
            h,
            format!("$7$1${}${}", b64.encode(b"salt"), b64.encode(expected))
        );
        let real = mosquitto_hash("pw", 1000).unwrap();
        let parts: Vec<&str> = real.split('$').collect();
        assert_eq!(parts[1], "7");
        assert_eq!(parts[2], "1000");
        assert_eq!(b64.decode(parts[3]).unwrap().len(), 12);
        assert_eq!(b64.decode(parts[4]).unwrap().len(), 64);
    }

    #[test]
    fn acl_confines_each_device() {
        let fleet = FleetId::new("plant").unwrap();
        let acl = broker_acl(
            &fleet,
            &[
                ("dev-1".into(), "$7$h1".into()),
                ("dev-2".into(), "$7$h2".into()),
            ],
            "drover-controller",
            Some("$7$c"),
        );
        assert!(acl.password_file.contains("dev-1:$7$h1\n"));
        assert!(acl.password_file.contains("drover-controller:$7$c\n"));
        let block = acl.acl_file.split("user dev-1\n").nth(1).unwrap();
        let block = block.split("\n\n").next().unwrap();
        assert_eq!(
            block,
            "topic write drover/plant/d/dev-1/up\ntopic write drover/plant/d/dev-1/status\n\
             topic read drover/plant/d/dev-1/down\ntopic read drover/plant/d/dev-1/chunk"
        );
        assert!(
            acl.acl_file
                .contains("user drover-controller\ntopic readwrite drover/plant/#")
        );
        assert!(!block.contains("dev-2"));
    }

    #[test]
    fn bundle_toml_round_trips() {
        let b = bundle(
            &DeviceId::new("dev-1").unwrap(),
            &FleetId::new("plant").unwrap(),
            "mqtt://127.0.0.1:1883",
            "pw".into(),
            "ab".repeat(32),
            drover_protocol::labels::parse_labels("site=a").unwrap(),
            BundleTls::default(),
        )
        .unwrap();
        let mut b = b;
        add_device_key(&mut b, &"cd".repeat(32)).unwrap();
        let v: toml::Value = toml::from_str(&b.agent_toml).unwrap();
        assert_eq!(v["device_key"].as_str(), Some("cd".repeat(32).as_str()));
        assert_eq!(b.device_key, "cd".repeat(32));
        assert_eq!(v["device_id"].as_str(), Some("dev-1"));
        assert_eq!(v["username"].as_str(), Some("dev-1"));
        assert_eq!(v["labels"]["site"].as_str(), Some("a"));
        assert_eq!(v["data_dir"].as_str(), Some(AGENT_DATA_DIR));
        assert_eq!(v["api"].as_str(), Some(AGENT_API));
    }
}
