//! The web dashboard at `/`: server-rendered HTML (maud) over the same
//! controller, rollout and retraining calls as the JSON API, so the numbers
//! on a page are the numbers the API answers.
//!
//! # Layout
//! - `session`: login with an API token, the session cookie, CSRF tokens and
//!   the middleware that authorises every dashboard request through the API's
//!   route table (`core::auth`).
//! - `layout`: the page shell, navigation and small rendering helpers (SVG
//!   bars, number formats).
//! - `fleet` (fleet and devices), `models`, `rollouts`, `drift` (drift and
//!   retraining): one module per page family.
//! - `live`: Server-Sent Events telling open pages that something changed.
//! - `assets`: htmx, uPlot and the dashboard's own JS/CSS, compiled into the
//!   binary (no CDN; works offline).
//!
//! Pages are readable without JavaScript: every chart has a table next to
//! it, and every action is a plain form POST answered by a redirect.

mod assets;
mod drift;
mod fleet;
mod layout;
mod live;
mod models;
mod rollouts;
mod session;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};

use crate::auth::{Actor, TokenStore};
use crate::controller::Controller;
use crate::core::auth;
use crate::retraining::RetrainRunner;
use crate::rollouts::RolloutService;

/// How many fleet drift scores per model the drift page keeps for its
/// "over time" chart.
const DRIFT_HISTORY: usize = 240;

/// The signed-in caller of a page, put into the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub actor: Actor,
    /// The CSRF token every state-changing request must carry.
    pub csrf: String,
}

impl Session {
    /// May this session call `method path` of the API?
    pub(crate) fn may(&self, method: &str, api_path: &str) -> bool {
        auth::authorize(auth::required(method, api_path), Some(self.actor.role)).is_ok()
    }
}

/// `(time ms, fleet drift score)` points per model, oldest first.
type DriftHistory = BTreeMap<String, VecDeque<(u64, f64)>>;

/// Everything the dashboard reads from: the handles the API routes use.
#[derive(Clone)]
pub(crate) struct Dashboard {
    ctl: Controller,
    rollouts: RolloutService,
    retrain: RetrainRunner,
    tokens: TokenStore,
    /// Set the session cookie's `Secure` attribute (the API serves TLS).
    secure_cookie: bool,
    /// Fleet drift score per model, sampled whenever the drift page
    /// computes it (the controller stores no drift history).
    drift_history: Arc<Mutex<DriftHistory>>,
    /// Turns true when the controller stops; live streams end then.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard over the controller's services.
    pub(crate) fn new(
        ctl: Controller,
        rollouts: RolloutService,
        retrain: RetrainRunner,
        tokens: TokenStore,
        secure_cookie: bool,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Dashboard {
        Dashboard {
            ctl,
            rollouts,
            retrain,
            tokens,
            secure_cookie,
            drift_history: Arc::default(),
            shutdown,
        }
    }

    fn record_drift(&self, model: &str, at_ms: u64, score: f64) {
        let mut h = self
            .drift_history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let q = h.entry(model.to_string()).or_default();
        // One point per 2 s at most, so several open pages do not flood it.
        if q.back().is_some_and(|(t, _)| at_ms < t + 2_000) {
            return;
        }
        if q.len() >= DRIFT_HISTORY {
            q.pop_front();
        }
        q.push_back((at_ms, score));
    }

    fn drift_points(&self, model: &str) -> Vec<(u64, f64)> {
        let h = self
            .drift_history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.get(model)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The dashboard's routes. Merge them next to the API router *after*
    /// the API's bearer-token layer: they carry their own session check,
    /// which applies the same route table.
    pub(crate) fn routes(self) -> Router {
        let pages = Router::new()
            .route("/", get(fleet::fleet_page))
            .route("/ui/devices", get(fleet::devices_page))
            .route("/ui/devices/{id}", get(fleet::device_page))
            .route("/ui/models", get(models::models_page))
            .route("/ui/models/{name}/{version}", get(models::model_page))
            .route("/ui/rollouts", get(rollouts::rollouts_page))
            .route("/ui/rollouts/{id}", get(rollouts::rollout_page))
            .route("/ui/rollouts/{id}/{verb}", post(rollouts::rollout_action))
            .route("/ui/drift", get(drift::drift_page))
            .route("/ui/retraining", get(drift::retraining_page))
            .route("/ui/retraining/run", post(drift::retrain_action))
            .route("/ui/retraining/{id}", get(drift::job_page))
            .route("/ui/events", get(live::events))
            .route("/ui/logout", post(session::logout))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                session::require,
            ));
        Router::new()
            .route("/ui/login", get(session::login_page).post(session::login))
            .route("/ui/assets/{file}", get(assets::asset))
            .merge(pages)
            .layer(axum::middleware::map_response(layout::security_headers))
            .with_state(self)
    }
}
