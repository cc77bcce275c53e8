//! Staged rollouts as a pure, sans-IO state machine.
//!
//! No tokio, no SQLite, no MQTT, no clock: the shell passes inputs and `now`
//! in (`handle_*`), and takes commands, metrics requests, audit events and
//! the next deadline out (`poll_*`). That is what lets the tests drive
//! thousands of simulated devices through whole rollouts with a fake clock.
//!
//! # Layout
//!
//! - [`spec`]: [`RolloutSpec`] (selector, waves, bake, shadow, gates, limits),
//!   defaults, validation and the CLI's textual forms.
//! - [`plan`]: stable device order, wave sizes, the stratified canary, where
//!   joiners go.
//! - [`gates`]: [`CohortMetrics`], gate evaluation, [`GateResult`].
//! - `types`: the inputs and outputs ([`DeviceView`], [`DeployOutcome`],
//!   [`RolloutAction`], [`MetricsRequest`], [`AuditEvent`], [`RolloutStatus`], …).
//! - `machine`: the [`Rollout`] state machine.
//!
//! # Phases
//!
//! `Pending` → (`Deploying(shadow)` → `Baking(shadow)`)? → for each wave
//! `Deploying(wave i)` → `Baking(wave i)` → … → `Completed`; from any active
//! phase `Paused` (then `Resume`), `RollingBack` → `RolledBack`, or `Aborted`.
//!
//! - **Deploying**: the stage's devices are queued; online devices get a
//!   command (rate-limited with `deploy_rate_per_min`), offline devices are
//!   silent at once. The stage is resolved when every device is updated,
//!   failed, or silent. A stage fails as soon as its failed share exceeds
//!   `max_failed`; a resolved stage whose silent share exceeds `max_silent`
//!   pauses (silent devices are never success). Otherwise baking starts.
//! - **Baking** (`bake_ms`, or `shadow_ms` for the shadow phase): metrics are
//!   requested every `metrics_interval_ms` and at the bake end. Any gate Fail
//!   acts at once (`on_fail`); every gate Pass on data reaching the bake end
//!   advances; Inconclusive keeps baking until `bake × bake_limit_factor`,
//!   then pauses with the reasons. No answer by then also pauses.
//! - **Shadow phase** (with `shadow_ms`): the first wave runs the candidate
//!   in shadow, gated on `shadow_agreement` (the explicit gate, else
//!   `>= 0.95`). On Pass the first wave deploys it; on Fail shadows are
//!   stopped and `on_fail` applies.
//! - **Paused**: no commands and no advancing; reports are still recorded.
//!   `Resume` re-enters the paused stage: devices not done are queued again
//!   (failed ones too when the pause was for failed installs) and the stage
//!   bakes afresh, so a resume never skips a gate.
//! - **RollingBack**: every device that may run the target (commanded or
//!   seen on it) goes back to its pre-rollout version, last wave first, at
//!   most `rollback_rate_per_min`. A device whose pre-rollout version is
//!   unknown, is the target, or is in the failed set gets no target and is
//!   reported (audit + status). The target joins the failed set.
//! - **Aborted**: queued commands are dropped, shadows stopped, devices left
//!   as they are.
//!
//! Devices: retryable failures are retried after `retry_backoff_ms × 2^(n−1)`
//! (capped at an hour) up to `max_attempts`; a device with no report by
//! `device_timeout_ms` after its command is silent; a silent device seen
//! online again (a later `last_seen`, or back from offline) is commanded
//! again, in any phase. Devices that start matching the selector join the
//! wave their hash gives ([`plan`]) and get the candidate at once if that
//! wave has started; during a rollback they keep what they run (a joiner
//! already on the target has no known earlier version and is reported).
//! Devices that stop matching are left as they are and no longer counted.
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     wait for an input, or until poll_timeout()
//!     rollout.handle_*(now, …)            // or handle_timeout(now)
//!     actions  = drain poll_action(now)
//!     requests = drain poll_metrics_request(now)
//!     audit    = drain poll_audit()
//!     persist(rollout.to_json(), audit)   // one transaction
//!     send actions; run requests → handle_metrics(now, req.id, canary, control)
//! }
//! ```
//!
//! # Persistence contract
//!
//! The whole [`Rollout`] is serde; persist it after `handle_*` calls and
//! before executing anything a `poll_*` returned (a `poll_*` records its
//! output as done: a polled command is `Commanded`, a polled request is
//! outstanding). Batching several inputs into one persist is fine as long as
//! no polled action runs before it. After a restart, restore the last
//! persisted state and call [`Rollout::handle_restart`]:
//!
//! - devices that reported success stay `Updated`: no command is resent;
//! - commands persisted as sent but unanswered are queued again (they may
//!   never have left the old process);
//! - a baking stage requests fresh metrics at once and still needs a Pass on
//!   data covering its whole bake: a gate is never skipped; gate results and
//!   the baseline already recorded are part of the state;
//! - audit events are drained into the same transaction as the state, so
//!   none is lost or duplicated.
//!
//! # Gate statistics
//!
//! Every gate compares the **canary** — the devices of the wave being gated
//! that reported the candidate active — with the **control** — matching
//! devices not yet in any started wave, still on their pre-rollout version —
//! over the **same time range** (bake start to request time), from telemetry
//! windows merged by the shell into one [`CohortMetrics`] per side
//! (histograms and counters add exactly, so merging is lossless).
//!
//! | metric | value | samples (per side) |
//! |---|---|---|
//! | `p95_latency_ratio`, `p99_latency_ratio` | canary quantile / control quantile of the merged latency histograms | latency count, and at least `10 / (1 − q)` (p95: 200, p99: 1000) so ≥ 10 samples lie beyond the quantile |
//! | `error_rate_delta` | canary errors/count − control errors/count | inference count |
//! | `accuracy_delta` | canary correct/labelled − control correct/labelled | labelled inferences only |
//! | `output_psi` | PSI of canary output counts against control output counts, both smoothed with ε = 1e-4 and renormalised (`crate::core::drift::stats::psi`); 0 = same distribution, > 0.2 is conventionally a significant shift | total output counts |
//! | `shadow_agreement` | agreed / compared for the shadow candidate (no control) | shadow comparisons |
//!
//! - **Point estimates plus a sample floor.** Each gate is a point estimate
//!   compared with an operator threshold that already states the tolerated
//!   regression; with the floor (`min_samples`, default 500, per gate
//!   overridable) on *each* side the estimate is stable enough to act on
//!   (e.g. an error rate of 1 % from 500 samples has a standard error of
//!   0.45 points), and operators can read value against threshold directly,
//!   which a p-value does not give them. Below the floor the gate is
//!   **Inconclusive, never Pass**: waiting costs time, passing on noise costs
//!   the fleet. A Fail also needs the floor, so noise cannot roll back either.
//! - Latency histograms bucket values within ±3 %, so ratio thresholds
//!   closer to 1 than about 1.06 are inside the measurement's resolution.
//!   Quantiles below 1 ms (`gates::LATENCY_RATIO_FLOOR_US`) are taken as 1 ms
//!   on both sides: at that scale CPU scheduling noise, not the model,
//!   decides the ratio (identical models measured 2.4× apart on a loaded
//!   2-core machine), and a sub-millisecond change is not worth a rollback.
//! - PSI over output classes measures whether the candidate predicts a
//!   different mix than the old model on comparable traffic; smoothing keeps
//!   it finite when a class is empty on one side.
//! - **No control left** (the final 100 % wave, or a control too small for a
//!   gate): the gate uses the **baseline**, the control metrics recorded when
//!   the previous wave passed (all its gates on a live control), and says so
//!   in its result (`control: baseline`, wave and time range). The baseline
//!   is an older time range, so time-of-day effects are not cancelled; the
//!   canary's own range still covers the full bake. With neither, the gate is
//!   Inconclusive and the rollout pauses at the bake limit.
//! - Only the current wave's devices form the canary, so a regression limited
//!   to the devices a wave adds (e.g. a new region) is not diluted by the
//!   earlier waves.
//! - Every evaluation is audited with every gate's value, threshold, sample
//!   sizes on both sides, control source and reason.
//!
//! # Defaults
//!
//! Waves 1/10/50/100 %, bake 10 min, no shadow, gates
//! `p95_latency_ratio<=1.2`, `p99_latency_ratio<=1.5`,
//! `error_rate_delta<=0.01`, `output_psi<=0.2` (+ `shadow_agreement>=0.95`
//! with a shadow phase; `accuracy_delta` is opt-in because it needs feedback
//! labels), 500 samples, device timeout 5 min, on-fail rollback, max silent
//! 5 %, max failed 5 %, 3 attempts from 30 s backoff, rollback 600
//! devices/min, cohorts by `region` and `hardware`, bake limit 3 × bake,
//! metrics every minute.

pub mod gates;
mod machine;
pub mod plan;
pub mod spec;
#[cfg(test)]
mod tests;
mod types;

pub use gates::{Baseline, CohortMetrics, ControlSource, Decision, GateResult};
pub use machine::Rollout;
pub use spec::{
    AGENT_TARGET, Gate, GateParseError, Metric, OnFail, Op, RolloutKind, RolloutSpec, SpecError,
};
pub use types::{
    AuditEvent, AuditKind, Conflict, DeployOutcome, DeviceView, Membership, MetricsKind,
    MetricsRequest, PauseCause, Phase, ResumePoint, RollbackStatus, RolloutAction, RolloutCommand,
    RolloutError, RolloutStatus, ShadowStatus, SilentCause, Stage, StepCounts, WaveStatus,
};
