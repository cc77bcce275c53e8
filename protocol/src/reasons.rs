//! Why something failed, on the wire: a [`ReasonCode`] machines match on plus
//! a human `detail`, together a [`Reason`].
//!
//! On the wire a code is its string (`"sha256_mismatch"`), exactly as before
//! the enum existed, so old and new agents and controllers interoperate: a
//! code this build does not know decodes as [`ReasonCode::Unknown`] and
//! re-encodes to the same string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares the known codes once: the variant, its wire string and whether a
/// retry may succeed. Generates the enum, `as_str`, `parse`, `retryable` and
/// `KNOWN`, so the three can never disagree.
macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal, retry: $retry:literal; )+) => {
        /// A stable, machine-readable failure code.
        ///
        /// `retryable()` says whether the same command may succeed if sent
        /// again (transient download, disk or store trouble); everything else
        /// (a bad signature, a failed health check) would fail the same way.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ReasonCode {
            $( $(#[$doc])* $variant, )+
            /// A code this build does not know (sent by a newer peer). Never
            /// retried: nothing says a retry would help.
            Unknown(String),
        }

        impl ReasonCode {
            /// Every known code (not [`ReasonCode::Unknown`]).
            pub const KNOWN: &'static [ReasonCode] = &[$( ReasonCode::$variant, )+];

            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( ReasonCode::$variant => $wire, )+
                    ReasonCode::Unknown(s) => s,
                }
            }

            /// The code for a wire string; unknown strings are kept as
            /// [`ReasonCode::Unknown`].
            pub fn parse(s: &str) -> ReasonCode {
                match s {
                    $( $wire => ReasonCode::$variant, )+
                    other => ReasonCode::Unknown(other.to_string()),
                }
            }

            /// Whether the same command may succeed if sent again.
            pub fn retryable(&self) -> bool {
                match self {
                    $( ReasonCode::$variant => $retry, )+
                    ReasonCode::Unknown(_) => false,
                }
            }
        }
    };
}

reason_codes! {
    // ---- transient: a retry may succeed ----
    /// The agent's own bookkeeping failed (a worker task died, a job step
    /// ran out of order).
    Internal = "internal", retry: true;
    /// The agent's database refused a write.
    StoreFailed = "store_failed", retry: true;
    /// Writing or reading back a downloaded chunk failed.
    WriteFailed = "write_failed", retry: true;
    /// The download made no progress for too long.
    DownloadStalled = "download_stalled", retry: true;
    /// A newer command replaced this job before it finished.
    Superseded = "superseded", retry: true;

    // ---- refused by the agent's own checks ----
    /// The manifest needs a newer agent.
    AgentTooOld = "agent_too_old", retry: false;
    /// The artifact exceeds the device's model size limit.
    ModelTooLarge = "model_too_large", retry: false;
    /// Keeping the model would exceed the device's disk budget.
    DiskBudget = "disk_budget", retry: false;
    /// The model has a shape or element type Drover does not serve.
    UnsupportedModel = "unsupported_model", retry: false;
    /// The artifact is not an ONNX model.
    NotOnnx = "not_onnx", retry: false;
    /// The graph uses an operator tract does not implement.
    UnsupportedOperator = "unsupported_operator", retry: false;
    /// tract failed to load or optimise the model, or its file was unreadable.
    LoadFailed = "load_failed", retry: false;
    /// A health-check sample did not produce the expected output.
    HealthCheckFailed = "health_check_failed", retry: false;
    /// Moving the verified artifact into place failed.
    InstallFailed = "install_failed", retry: false;
    /// The shadow worker could not start.
    ShadowFailed = "shadow_failed", retry: false;
    /// The model to shadow is already the active one.
    ShadowIsActive = "shadow_is_active", retry: false;
    /// The model to shadow is being deployed right now.
    AlreadyDeploying = "already_deploying", retry: false;
    /// A rollback target (or a model to restore) is not on the device.
    NotInstalled = "not_installed", retry: false;
    /// A shadow job was stopped by a StopShadow command.
    Cancelled = "cancelled", retry: false;
    /// A rollback the controller commanded.
    Commanded = "commanded", retry: false;

    // ---- the local guard ----
    /// The new model failed a health check in service.
    GuardHealthCheck = "guard_health_check", retry: false;
    /// The new model's first window had too many errors.
    GuardErrorRate = "guard_error_rate", retry: false;
    /// The new model's first window broke the manifest's p95 latency budget.
    GuardLatencyBudget = "guard_latency_budget", retry: false;
    /// The guard wanted a rollback but there was no previous model.
    GuardNoPrevious = "guard_no_previous", retry: false;

    // ---- the agent's update of itself ----
    /// A new agent binary failed to start (crashed or exited before
    /// confirming) too many times; the previous binary runs again.
    AgentStartFailed = "agent_start_failed", retry: false;
    /// A new agent binary did not reach the broker within its deadline; the
    /// previous binary runs again.
    AgentUnconfirmed = "agent_unconfirmed", retry: false;
    /// An agent release larger than the device accepts (`max_agent_bytes`).
    ReleaseTooLarge = "release_too_large", retry: false;

    // ---- trust (see `TrustError`) ----
    /// The key list is not signed by the pinned root key.
    KeyListNotRootSigned = "key_list_not_root_signed", retry: false;
    /// The key list is older than the installed one.
    KeyListRollback = "key_list_rollback", retry: false;
    /// Same key list version, other content.
    KeyListConflict = "key_list_conflict", retry: false;
    /// The key list has expired.
    KeyListExpired = "key_list_expired", retry: false;
    /// No key list installed yet.
    NoKeyList = "no_key_list", retry: false;
    /// The signing key is not in the key list.
    UnknownKey = "unknown_key", retry: false;
    /// The signing key lacks the needed role.
    MissingRole = "missing_role", retry: false;
    /// A signature does not verify.
    BadSignature = "bad_signature", retry: false;
    /// The manifest has expired.
    ManifestExpired = "manifest_expired", retry: false;
    /// The command has expired.
    CommandExpired = "command_expired", retry: false;
    /// The command's sequence number is not above the last accepted one.
    ReplayedCommand = "replayed_command", retry: false;
    /// The command is for another device.
    WrongTarget = "wrong_target", retry: false;
    /// Deploying below the model's version floor.
    Downgrade = "downgrade", retry: false;
    /// The downloaded bytes do not match the manifest's digest or size.
    ArtifactMismatch = "artifact_mismatch", retry: false;
    /// An agent release built for another CPU architecture.
    WrongArch = "wrong_arch", retry: false;
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ReasonCode {
    fn from(s: &str) -> ReasonCode {
        ReasonCode::parse(s)
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReasonCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ReasonCode, D::Error> {
        // Through String, not &str: postcard and serde_json both hand out
        // owned strings when the input is not borrowed.
        String::deserialize(d).map(|s| ReasonCode::parse(&s))
    }
}

/// A stable machine-readable code plus a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// What kind of failure; see [`ReasonCode`].
    pub code: ReasonCode,
    /// What happened, for operators.
    pub detail: String,
}

impl Reason {
    /// Builds a reason.
    pub fn new(code: ReasonCode, detail: impl Into<String>) -> Reason {
        Reason {
            code,
            detail: detail.into(),
        }
    }

    /// Whether the same command may succeed if sent again.
    pub fn retryable(&self) -> bool {
        self.code.retryable()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format before the enum: a struct of two strings.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldReason {
        code: String,
        detail: String,
    }

    #[test]
    fn every_known_code_round_trips_through_its_string() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ReasonCode::KNOWN {
            assert!(seen.insert(c.as_str()), "{c} spelled twice");
            assert_eq!(&ReasonCode::parse(c.as_str()), c);
            assert!(!matches!(c, ReasonCode::Unknown(_)));
        }
    }

    #[test]
    fn unknown_code_from_a_newer_agent_round_trips() {
        let old = OldReason {
            code: "gpu_on_fire".into(),
            detail: "smoke".into(),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let r: Reason = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(r.code, ReasonCode::Unknown("gpu_on_fire".into()));
        assert!(!r.retryable());
        // Re-encoded, an older peer still reads the same string.
        let again = postcard::to_allocvec(&r).unwrap();
        assert_eq!(again, bytes);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"code":"gpu_on_fire","detail":"smoke"}"#);
        assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
    }

    #[test]
    fn wire_format_is_the_old_string_pair() {
        let r = Reason::new(ReasonCode::DownloadStalled, "no bytes for 30 s");
        let bytes = postcard::to_allocvec(&r).unwrap();
        let old: OldReason = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old.code, "download_stalled");
        assert_eq!(postcard::from_bytes::<Reason>(&bytes).unwrap(), r);
    }

    #[test]
    fn only_transient_trouble_is_retryable() {
        let retryable: Vec<&str> = ReasonCode::KNOWN
            .iter()
            .filter(|c| c.retryable())
            .map(ReasonCode::as_str)
            .collect();
        assert_eq!(
            retryable,
            [
                "internal",
                "store_failed",
                "write_failed",
                "download_stalled",
                "superseded"
            ]
        );
        assert!(!ReasonCode::ArtifactMismatch.retryable());
        assert!(!ReasonCode::HealthCheckFailed.retryable());
    }
}
