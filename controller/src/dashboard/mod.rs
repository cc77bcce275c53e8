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

use axum::Router;
use axum::routing::{get, post};

use crate::auth::{Actor, TokenStore};
use crate::controller::Controller;
use crate::core::auth;
use crate::retraining::RetrainRunner;
use crate::rollouts::RolloutService;

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

/// Everything the dashboard reads from: the handles the API routes use.
#[derive(Clone)]
pub(crate) struct Dashboard {
    ctl: Controller,
    rollouts: RolloutService,
    retrain: RetrainRunner,
    tokens: TokenStore,
    /// Set the session cookie's `Secure` attribute (the API serves TLS).
    secure_cookie: bool,
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
            shutdown,
        }
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
