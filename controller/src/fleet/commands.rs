//! Signed commands and deploys: per-device monotonic sequence numbers
//! (persisted; moved past what a device reports in Hello), the deployment
//! record a `drover deploy` waits on, and the handlers for what devices
//! answer (Hello, status, Ack, DeployStatus).

use drover_protocol::messages::{
    Action, Command, CommandAck, DeployPhase, DeployStatus, Down, Hello,
};
use drover_protocol::{DeviceId, ModelRef, Signed, Status};
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::controller::{Controller, ControllerError, DeviceEvent};
use crate::db::DbError;
use crate::fleet::devices::{self, DeployReport};
use crate::metrics::inc;

/// Share of live inputs a shadow deploy samples, per mille.
pub(crate) const DEFAULT_SHADOW_PER_MILLE: u16 = 100;

/// A deploy of one model version to one device, as tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Deployment id.
    pub id: u64,
    /// Device.
    pub device: String,
    /// `name@version`.
    pub model: String,
    /// Shadow deploy.
    pub shadow: bool,
    /// Command sequence.
    pub seq: u64,
    /// `sent`, `accepted`, `downloading`, `verifying`, `loading`,
    /// `health_check`, `active`, `shadowing`, `rejected`, `failed`, `rolled_back`.
    pub state: String,
    /// Bytes downloaded.
    pub received: u64,
    /// Artifact size.
    pub total: u64,
    /// Why it failed.
    pub reason: Option<String>,
    /// Finished (successfully or not).
    pub done: bool,
    /// Finished successfully.
    pub ok: bool,
    /// Created (ms).
    pub created_at: u64,
    /// Last update (ms).
    pub updated_at: u64,
}

/// One model command sent to a device and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Command sequence.
    pub seq: u64,
    /// `deploy`, `shadow` or `rollback`.
    pub kind: String,
    /// `name@version` commanded (for a rollback, its target if any).
    pub model: Option<String>,
    /// Issued (ms since the epoch).
    pub issued_at: u64,
    /// `None` while unanswered; `accepted` once acknowledged; then
    /// `active`/`shadowing`, or `failed: reason`/`rolled_back: reason`, or
    /// the refusal the device acknowledged with.
    pub result: Option<String>,
}

/// Phase word and (received, total, reason).
pub(crate) fn phase_word(p: &DeployPhase) -> (&'static str, u64, u64, Option<String>) {
    match p {
        DeployPhase::Downloading { received, total } => ("downloading", *received, *total, None),
        DeployPhase::Verifying => ("verifying", 0, 0, None),
        DeployPhase::Loading => ("loading", 0, 0, None),
        DeployPhase::HealthCheck => ("health_check", 0, 0, None),
        DeployPhase::Active => ("active", 0, 0, None),
        DeployPhase::Shadowing => ("shadowing", 0, 0, None),
        DeployPhase::Failed(r) => ("failed", 0, 0, Some(r.to_string())),
        DeployPhase::RolledBack { to, reason } => (
            "rolled_back",
            0,
            0,
            Some(match to {
                Some(to) => format!("rolled back to {to}: {reason}"),
                None => format!("rolled back: {reason}"),
            }),
        ),
    }
}

fn row_to_deployment(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
    let state: String = r.get(6)?;
    let mut d: Deployment = serde_json::from_str(&state).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    })?;
    d.id = r.get::<_, i64>(0)? as u64;
    Ok(d)
}

const DEPLOYMENT_COLUMNS: &str = "id, device, model, version, shadow, seq, state";

impl Controller {
    /// Signs `action` for `device` with the next sequence number and
    /// publishes it (QoS 1 on `down`). Unknown devices get nothing.
    pub async fn send_command(
        &self,
        device: &DeviceId,
        action: Action,
    ) -> Result<u64, ControllerError> {
        let now = self.now();
        let id = device.to_string();
        let kind = action.kind();
        let model = match &action {
            Action::Deploy { manifest } | Action::Shadow { manifest, .. } => manifest
                .decode_unverified()
                .ok()
                .map(|m| m.model_ref().to_string()),
            Action::Rollback { model, to, .. } => Some(match to {
                Some(v) => format!("{model}@{v}"),
                None => model.to_string(),
            }),
            // The digest, so chunk requests for the binary are answered
            // (`download_in_flight`).
            Action::UpdateAgent { release, .. } => release
                .decode_unverified()
                .ok()
                .map(|r| format!("agent:{}", r.artifact.sha256.to_hex())),
            _ => None,
        };
        let seq = self
            .db()
            .call(move |c| {
                let tx = c.transaction()?;
                let issued: Option<i64> = tx
                    .query_row("SELECT issued_seq FROM devices WHERE id = ?1", params![id], |r| r.get(0))
                    .optional()?;
                let Some(issued) = issued else { return Ok(None) };
                let seq = issued + 1;
                tx.execute("UPDATE devices SET issued_seq = ?2 WHERE id = ?1", params![id, seq])?;
                tx.execute(
                    "INSERT INTO commands (device, seq, kind, model, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, seq, kind, model, now.0 as i64],
                )?;
                tx.commit()?;
                Ok(Some(seq as u64))
            })
            .await?
            .ok_or_else(|| ControllerError::UnknownDevice(device.to_string()))?;
        let cmd = Command {
            fleet: self.fleet().clone(),
            target: device.clone(),
            seq,
            issued_at: now,
            expires_at: now.plus_ms(self.inner.cfg.command_validity_ms),
            action,
        };
        let signer = self.commands_signer();
        let signed = Signed::sign(&cmd, signer.as_ref())
            .map_err(|e| ControllerError::Task(e.to_string()))?;
        self.publish_down(device, &Down::Command(signed)).await?;
        inc(&self.inner.metrics.commands_sent);
        tracing::info!(%device, seq, kind, "command sent");
        Ok(seq)
    }

    /// Deploys (or shadows) `model` on `device`: checks both exist, sends
    /// the signed command and records a deployment to follow.
    pub async fn deploy(
        &self,
        model: &ModelRef,
        device: &DeviceId,
        shadow: bool,
    ) -> Result<Deployment, ControllerError> {
        let Some(info) = self.device(device).await? else {
            return Err(ControllerError::UnknownDevice(device.to_string()));
        };
        let manifest = self.manifest(&model.name, model.version).await?;
        if let (Some(running), Ok(m)) = (
            info.agent_version
                .as_deref()
                .and_then(drover_protocol::manifest::AgentVersion::parse),
            manifest.decode_unverified(),
        ) && running < m.min_agent_version
        {
            return Err(ControllerError::Invalid(format!(
                "device {device} runs agent {running}; {model} needs agent {} or newer",
                m.min_agent_version
            )));
        }
        let action = if shadow {
            Action::Shadow {
                manifest,
                sample_per_mille: DEFAULT_SHADOW_PER_MILLE,
            }
        } else {
            Action::Deploy { manifest }
        };
        let seq = self.send_command(device, action).await?;
        let now = self.now().0;
        let mut d = Deployment {
            id: 0,
            device: device.to_string(),
            model: model.to_string(),
            shadow,
            seq,
            state: "sent".into(),
            received: 0,
            total: 0,
            reason: None,
            done: false,
            ok: false,
            created_at: now,
            updated_at: now,
        };
        let (dev, name, version) = (device.to_string(), model.name.to_string(), model.version.0);
        let state = serde_json::to_string(&d).map_err(|e| ControllerError::Task(e.to_string()))?;
        d.id = self
            .db()
            .call(move |c| {
                c.execute(
                    "INSERT INTO deployments (device, model, version, shadow, seq, state, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    params![dev, name, version as i64, shadow as i64, seq as i64, state, now as i64],
                )?;
                Ok(c.last_insert_rowid() as u64)
            })
            .await?;
        Ok(d)
    }

    /// The device's latest model commands (deploy, shadow, rollback), newest
    /// first, each with how it ended as far as the device reported.
    pub async fn deploy_history(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<CommandRecord>, ControllerError> {
        let id = device.to_string();
        Ok(self
            .db()
            .call(move |c| {
                let mut st = c.prepare(
                    "SELECT seq, kind, model, issued_at, result FROM commands
                     WHERE device = ?1 AND kind IN ('deploy', 'shadow', 'rollback')
                     ORDER BY seq DESC LIMIT ?2",
                )?;
                let rows = st.query_map(params![id, i64::from(limit)], |r| {
                    Ok(CommandRecord {
                        seq: r.get::<_, i64>(0)? as u64,
                        kind: r.get(1)?,
                        model: r.get(2)?,
                        issued_at: r.get::<_, i64>(3)? as u64,
                        result: r.get(4)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }

    /// A deployment by id.
    pub async fn deployment(&self, id: u64) -> Result<Option<Deployment>, ControllerError> {
        Ok(self
            .db()
            .call(move |c| {
                Ok(c.query_row(
                    &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"),
                    params![id as i64],
                    row_to_deployment,
                )
                .optional()?)
            })
            .await?)
    }

    async fn update_deployment(
        &self,
        device: &DeviceId,
        seq: u64,
        f: impl FnOnce(&mut Deployment) + Send + 'static,
    ) -> Result<(), DbError> {
        let dev = device.to_string();
        let now = self.now().0;
        self.db()
            .call(move |c| {
                let tx = c.transaction()?;
                let found = tx
                    .query_row(
                        &format!(
                            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE device = ?1 AND seq = ?2 \
                             ORDER BY id DESC LIMIT 1"
                        ),
                        params![dev, seq as i64],
                        row_to_deployment,
                    )
                    .optional()?;
                if let Some(mut d) = found {
                    f(&mut d);
                    d.updated_at = now;
                    let state = serde_json::to_string(&d).map_err(|e| DbError::Corrupt(e.to_string()))?;
                    tx.execute(
                        "UPDATE deployments SET state = ?2, updated_at = ?3 WHERE id = ?1",
                        params![d.id as i64, state, now as i64],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Whether a deploy report may change state: a model reported serving
    /// or shadowing must be the registered model of the deploy or shadow
    /// command with that sequence
    /// (or, for the agent's own reports with sequence 0, a model commanded
    /// to it earlier); a rollback must land on a commanded model or none.
    async fn deploy_report_is_commanded(
        &self,
        device: &DeviceId,
        status: &DeployStatus,
    ) -> Result<bool, ControllerError> {
        let serving = match &status.phase {
            DeployPhase::Active | DeployPhase::Shadowing => Some(status.model.clone()),
            DeployPhase::RolledBack { to, .. } => to.clone(),
            _ => return Ok(true),
        };
        let Some(model) = serving else {
            return Ok(true);
        };
        let id = device.to_string();
        let seq = status.seq;
        let by_seq =
            matches!(status.phase, DeployPhase::Active | DeployPhase::Shadowing) && seq > 0;
        Ok(self
            .db()
            .call(move |c| {
                if by_seq {
                    let found: Option<i64> = c
                        .query_row(
                            "SELECT 1 FROM commands c JOIN models m ON m.name = ?4 AND m.version = ?5
                             WHERE c.device = ?1 AND c.seq = ?2 AND c.model = ?3
                               AND c.kind IN ('deploy', 'shadow') LIMIT 1",
                            params![id, seq as i64, model.to_string(), model.name.as_str(), model.version.0 as i64],
                            |r| r.get(0),
                        )
                        .optional()?;
                    Ok(found.is_some())
                } else {
                    devices::was_commanded(c, &id, &model)
                }
            })
            .await?)
    }

    /// Whether `device` may download the artifact `sha`: a deploy or shadow
    /// command for a model with that artifact was sent to it, and it does
    /// not report that model as serving or shadowing yet.
    pub(crate) async fn download_in_flight(
        &self,
        device: &DeviceId,
        sha: drover_protocol::Sha256,
    ) -> Result<bool, ControllerError> {
        let id = device.to_string();
        Ok(self
            .db()
            .call(move |c| {
                let found: Option<i64> = c
                    .query_row(
                        "SELECT 1 FROM commands c
                           JOIN models m ON c.model = m.name || '@' || m.version
                           JOIN devices d ON d.id = c.device
                         WHERE c.device = ?1 AND c.kind IN ('deploy', 'shadow') AND m.sha256 = ?2
                           AND d.active IS NOT c.model AND d.shadow IS NOT c.model
                         UNION ALL
                         SELECT 1 FROM commands c
                         WHERE c.device = ?1 AND c.kind = 'update_agent' AND c.model = 'agent:' || ?2
                         LIMIT 1",
                        params![id, sha.to_hex()],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(found.is_some())
            })
            .await?)
    }

    /// Handles a Hello: inventory, sequence counter, key list catch-up.
    pub(crate) async fn handle_hello(
        &self,
        device: DeviceId,
        hello: Hello,
    ) -> Result<(), ControllerError> {
        let now = self.now();
        let (id, h) = (device.clone(), hello.clone());
        let refused = self
            .db()
            .call(move |c| devices::apply_hello(c, &id, &h, now))
            .await?;
        for _ in 0..refused {
            self.refuse_uplink(
                &device,
                "uncommanded_model",
                "Hello names a model never commanded to this device; slot left as it was",
            );
        }
        let (version, list) = self.key_list();
        if hello.key_list_version < version {
            self.publish_down(&device, &Down::KeyList(list)).await?;
            inc(&self.inner.metrics.key_lists_sent);
        }
        self.emit(DeviceEvent::Hello { device, hello });
        Ok(())
    }

    /// Handles the status topic (online, offline / last will).
    pub(crate) async fn handle_status(
        &self,
        device: DeviceId,
        status: Status,
    ) -> Result<(), ControllerError> {
        let now = self.now();
        let id = device.clone();
        let online = matches!(status, Status::Online { .. });
        self.db()
            .call(move |c| match &status {
                Status::Online { agent_version, .. } => {
                    devices::apply_status(c, &id, Some(agent_version), now)
                }
                Status::Offline => devices::apply_status(c, &id, None, now),
            })
            .await?;
        self.emit(if online {
            DeviceEvent::Online { device }
        } else {
            DeviceEvent::Offline { device }
        });
        Ok(())
    }

    /// Handles a command ack.
    pub(crate) async fn handle_ack(
        &self,
        device: DeviceId,
        ack: CommandAck,
    ) -> Result<(), ControllerError> {
        let (id, seq) = (device.to_string(), ack.seq);
        let result = match &ack.result {
            Ok(()) => "accepted".to_string(),
            Err(r) => r.to_string(),
        };
        let now = self.now().0;
        self.db()
            .call(move |c| {
                // A deploy's final outcome (recorded from its status) is
                // not overwritten by a late or repeated acceptance.
                c.execute(
                    "UPDATE commands SET result = ?3 WHERE device = ?1 AND seq = ?2
                       AND (result IS NULL OR result = 'accepted')",
                    params![id, seq as i64, result],
                )?;
                c.execute(
                    "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
                    params![id, now as i64],
                )?;
                Ok(())
            })
            .await?;
        match &ack.result {
            Ok(()) => {
                self.update_deployment(&device, ack.seq, |d| {
                    if d.state == "sent" {
                        d.state = "accepted".into();
                    }
                })
                .await?
            }
            // Sequence 0: the agent refused something it could not attribute
            // to a fresh command of ours (a replay, a forgery, another
            // device's command). Logged and counted; no deployment moves.
            Err(reason) if ack.seq == 0 => {
                inc(&self.inner.metrics.commands_rejected);
                tracing::warn!(%device, %reason, "device refused a command that was not a fresh one of ours");
            }
            Err(reason) => {
                inc(&self.inner.metrics.commands_rejected);
                tracing::warn!(%device, seq = ack.seq, %reason, "device rejected a command");
                let reason = reason.to_string();
                // A refusal never turns a finished deployment into a failure.
                self.update_deployment(&device, ack.seq, move |d| {
                    if d.done {
                        return;
                    }
                    d.state = "rejected".into();
                    d.reason = Some(reason);
                    d.done = true;
                    d.ok = false;
                })
                .await?
            }
        }
        self.emit(DeviceEvent::Ack { device, ack });
        Ok(())
    }

    /// Handles deploy progress.
    pub(crate) async fn handle_deploy_status(
        &self,
        device: DeviceId,
        status: DeployStatus,
    ) -> Result<(), ControllerError> {
        if !self.deploy_report_is_commanded(&device, &status).await? {
            self.refuse_uplink(
                &device,
                "uncommanded_model",
                format!(
                    "deploy report for {} (seq {}) that was not commanded to this device",
                    status.model, status.seq
                ),
            );
            return Ok(());
        }
        let (word, received, total, reason) = phase_word(&status.phase);
        let now = self.now();
        let report = DeployReport {
            seq: status.seq,
            model: status.model.to_string(),
            phase: word.to_string(),
            received,
            total,
            reason: reason.clone(),
            at: now.0,
        };
        let id = device.to_string();
        let model = status.model.to_string();
        let phase = status.phase.clone();
        let seq = status.seq;
        let outcome = match (word, &reason) {
            ("active" | "shadowing", _) => Some(word.to_string()),
            ("failed" | "rolled_back", Some(why)) => Some(format!("{word}: {why}")),
            ("failed" | "rolled_back", None) => Some(word.to_string()),
            _ => None,
        };
        self.db()
            .call(move |c| {
                let json = serde_json::to_string(&report).map_err(|e| DbError::Corrupt(e.to_string()))?;
                c.execute(
                    "UPDATE devices SET deploy_state = ?2, last_seen = ?3 WHERE id = ?1",
                    params![id, json, now.0 as i64],
                )?;
                // The command's history row keeps how it ended.
                if let (Some(outcome), true) = (&outcome, seq > 0) {
                    c.execute(
                        "UPDATE commands SET result = ?3 WHERE device = ?1 AND seq = ?2",
                        params![id, seq as i64, outcome],
                    )?;
                }
                match &phase {
                    DeployPhase::Active => {
                        c.execute(
                            "UPDATE devices SET previous = CASE WHEN active IS NOT ?2 THEN active ELSE previous END,
                                 active = ?2 WHERE id = ?1",
                            params![id, model],
                        )?;
                    }
                    DeployPhase::Shadowing => {
                        c.execute("UPDATE devices SET shadow = ?2 WHERE id = ?1", params![id, model])?;
                    }
                    DeployPhase::RolledBack { to, .. } => {
                        c.execute(
                            "UPDATE devices SET active = ?2 WHERE id = ?1",
                            params![id, to.as_ref().map(ToString::to_string)],
                        )?;
                    }
                    _ => {}
                }
                Ok(())
            })
            .await?;
        if status.seq > 0 {
            let reason2 = reason.clone();
            self.update_deployment(&device, status.seq, move |d| {
                // A finished deployment stays as it finished.
                if d.done {
                    return;
                }
                d.state = word.to_string();
                if word == "downloading" {
                    d.received = received;
                    d.total = total;
                }
                match word {
                    "active" | "shadowing" => {
                        d.done = true;
                        d.ok = true;
                        if d.total > 0 {
                            d.received = d.total;
                        }
                    }
                    "failed" | "rolled_back" => {
                        d.done = true;
                        d.ok = false;
                        d.reason = reason2;
                    }
                    _ => {}
                }
            })
            .await?;
        }
        self.emit(DeviceEvent::DeployStatus { device, status });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use drover_protocol::codec;
    use drover_protocol::messages::{Reason, ReasonCode};
    use drover_protocol::topic::{Channel, Topic};
    use drover_protocol::{FleetId, Sign, Timestamp, TrustState};

    use super::*;
    use crate::clock::{Clock as _, FakeClock};
    use crate::controller::ControllerConfig;

    fn controller() -> (tempfile::TempDir, Controller, Arc<FakeClock>) {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(Timestamp(1_800_000_000_000));
        let c = Controller::open(
            ControllerConfig {
                // Tests enroll devices; the production cost only slows them.
                device_kdf_iterations: crate::fleet::credentials::SIMULATION_KDF_ITERATIONS,
                ..ControllerConfig::new(dir.path(), FleetId::new("plant").unwrap())
            },
            clock.clone(),
        )
        .unwrap();
        (dir, c, clock)
    }

    fn decode_down(topic: &str, payload: &[u8]) -> (Topic, Down) {
        let t = Topic::parse(topic).unwrap();
        let d = codec::decode_down(payload, t.channel).unwrap();
        (t, d)
    }

    #[tokio::test]
    async fn sequences_are_monotonic_persisted_and_move_past_hello() {
        let (dir, c, clock) = controller();
        let mut out = c.capture_outbound();
        let dev = DeviceId::new("dev-1").unwrap();
        assert!(matches!(
            c.send_command(&dev, Action::StopShadow).await,
            Err(ControllerError::UnknownDevice(_))
        ));
        assert!(out.try_recv().is_err(), "nothing sent to unknown devices");
        c.register_device(&dev, Default::default()).await.unwrap();
        assert_eq!(c.send_command(&dev, Action::StopShadow).await.unwrap(), 1);
        assert_eq!(c.send_command(&dev, Action::StopShadow).await.unwrap(), 2);

        // The device verifies what we sent with the key list we publish.
        let (topic, payload) = out.try_recv().unwrap();
        let (t, down) = decode_down(&topic, &payload);
        assert_eq!(t.channel, Channel::Down);
        assert_eq!(t.device, dev);
        let Down::Command(signed) = down else {
            panic!("expected a command")
        };
        let mut trust = TrustState::new(
            drover_protocol::PublicKey::from_hex(&c.keys_info().root_public_key).unwrap(),
            dev.clone(),
        );
        trust.handle_key_list(&c.key_list().1, clock.now()).unwrap();
        let cmd = trust.accept_command(&signed, clock.now()).unwrap();
        assert_eq!(cmd.seq, 1);
        assert_eq!(cmd.expires_at, clock.now().plus_ms(3_600_000));

        // A Hello reporting a higher accepted sequence moves the counter past it,
        // and an old key list version gets the current list.
        let hello = Hello {
            agent_version: "0.1.0".into(),
            last_command_seq: 10,
            key_list_version: 0,
            ..Hello::default()
        };
        c.handle_hello(dev.clone(), hello).await.unwrap();
        let _second_command = out.try_recv().unwrap();
        let (_, key_list) = out.try_recv().unwrap();
        assert!(matches!(
            decode_down(&_second_command.0, &key_list).1,
            Down::KeyList(_)
        ));
        assert_eq!(c.send_command(&dev, Action::StopShadow).await.unwrap(), 11);
        drop(c);

        // Persisted: a reopened controller continues the sequence.
        let c2 = Controller::open(
            ControllerConfig {
                // Tests enroll devices; the production cost only slows them.
                device_kdf_iterations: crate::fleet::credentials::SIMULATION_KDF_ITERATIONS,
                ..ControllerConfig::new(dir.path(), FleetId::new("plant").unwrap())
            },
            clock.clone(),
        )
        .unwrap();
        let _out2 = c2.capture_outbound();
        assert_eq!(c2.send_command(&dev, Action::StopShadow).await.unwrap(), 12);
        assert_eq!(c2.device(&dev).await.unwrap().unwrap().issued_seq, 12);
    }

    #[tokio::test]
    async fn deploy_follows_acks_and_status() {
        let (_dir, c, _clock) = controller();
        let _out = c.capture_outbound();
        let dev = DeviceId::new("dev-1").unwrap();
        c.register_device(&dev, Default::default()).await.unwrap();
        let onnx = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/models/sensor_clf_v1.onnx"),
        )
        .unwrap();
        let stored = c
            .push_model(crate::registry::PushRequest {
                name: Some(drover_protocol::ModelName::new("sensor").unwrap()),
                onnx,
                ..Default::default()
            })
            .await
            .unwrap();
        let model = stored.manifest.model_ref();
        let mut events = c.subscribe();
        let d = c.deploy(&model, &dev, false).await.unwrap();
        assert_eq!(d.state, "sent");
        let status = |phase| DeployStatus {
            seq: d.seq,
            model: model.clone(),
            phase,
        };
        c.handle_deploy_status(
            dev.clone(),
            status(DeployPhase::Downloading {
                received: 100,
                total: 610,
            }),
        )
        .await
        .unwrap();
        let cur = c.deployment(d.id).await.unwrap().unwrap();
        assert_eq!(
            (cur.state.as_str(), cur.received, cur.total, cur.done),
            ("downloading", 100, 610, false)
        );
        c.handle_deploy_status(dev.clone(), status(DeployPhase::Active))
            .await
            .unwrap();
        let cur = c.deployment(d.id).await.unwrap().unwrap();
        assert!(cur.done && cur.ok);
        assert_eq!(
            c.device(&dev).await.unwrap().unwrap().active.as_deref(),
            Some("sensor@1")
        );
        assert!(matches!(
            events.recv().await.unwrap(),
            DeviceEvent::DeployStatus { .. }
        ));

        // A rejected command fails its deployment with the device's reason.
        let d2 = c.deploy(&model, &dev, true).await.unwrap();
        c.handle_ack(
            dev.clone(),
            CommandAck {
                seq: d2.seq,
                result: Err(Reason::new(ReasonCode::Downgrade, "below the floor")),
            },
        )
        .await
        .unwrap();
        let cur = c.deployment(d2.id).await.unwrap().unwrap();
        assert!(cur.done && !cur.ok);
        assert_eq!(cur.state, "rejected");
        assert!(cur.reason.unwrap().contains("below the floor"));
        assert_eq!(
            c.metrics()
                .commands_rejected
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The device's deploy history: newest first, each with its end; a
        // late acceptance does not overwrite a finished deploy's outcome.
        c.handle_ack(
            dev.clone(),
            CommandAck {
                seq: d.seq,
                result: Ok(()),
            },
        )
        .await
        .unwrap();
        let history = c.deploy_history(&dev, 10).await.unwrap();
        let got: Vec<_> = history
            .iter()
            .map(|r| (r.seq, r.kind.as_str(), r.result.as_deref()))
            .collect();
        assert_eq!(got.len(), 2, "{history:?}");
        assert_eq!(got[0].0, d2.seq);
        assert_eq!(got[0].1, "shadow");
        assert!(got[0].2.unwrap().contains("below the floor"), "{got:?}");
        assert_eq!(got[1], (d.seq, "deploy", Some("active")));
        // Unknown device or model: nothing sent.
        assert!(matches!(
            c.deploy(&model, &DeviceId::new("ghost").unwrap(), false)
                .await,
            Err(ControllerError::UnknownDevice(_))
        ));
        let missing = drover_protocol::ModelRef {
            name: model.name.clone(),
            version: drover_protocol::Version(9),
        };
        assert!(matches!(
            c.deploy(&missing, &dev, false).await,
            Err(ControllerError::NotFound(_))
        ));
        let _ = c.models_signer().public_key();

        // An agent older than the manifest's minimum gets nothing.
        let old = DeviceId::new("old-1").unwrap();
        c.register_device(&old, Default::default()).await.unwrap();
        c.handle_hello(
            old.clone(),
            Hello {
                agent_version: "0.0.9".into(),
                key_list_version: 1,
                ..Hello::default()
            },
        )
        .await
        .unwrap();
        let sent = c
            .metrics()
            .commands_sent
            .load(std::sync::atomic::Ordering::Relaxed);
        match c.deploy(&model, &old, false).await {
            Err(ControllerError::Invalid(msg)) => assert!(msg.contains("0.1.0"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.metrics()
                .commands_sent
                .load(std::sync::atomic::Ordering::Relaxed),
            sent
        );
    }
}
