//! `GET /ui/events`: Server-Sent Events that tell an open page when the
//! fleet or a rollout changed, so it can re-fetch its `#live` part (htmx).
//! The stream carries a fingerprint, not data: pages always render from the
//! same calls as the API.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use sha2::{Digest as _, Sha256};

use super::Dashboard;

/// How often the stream looks for changes.
const TICK: Duration = Duration::from_secs(2);

async fn fingerprint(d: &Dashboard) -> String {
    let mut h = Sha256::new();
    for r in d.rollouts.list().await {
        h.update(format!("{}|{}|{}|{};", r.id, r.phase, r.active, r.devices).as_bytes());
        if r.active {
            // Wave counters move while a rollout runs.
            if let Ok(detail) = d.rollouts.detail(&r.id, 1).await {
                h.update(serde_json::to_vec(&detail.status.waves).unwrap_or_default());
                h.update(serde_json::to_vec(&detail.status.last_gates).unwrap_or_default());
            }
        }
    }
    if let Ok((online, total)) = d.ctl.devices_online().await {
        h.update(format!("devices {online}/{total}").as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

pub(super) async fn events(
    State(d): State<Dashboard>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((d, None::<String>), |(mut d, last)| async move {
        loop {
            if *d.shutdown.borrow() {
                // End the stream so the server's graceful drain need not wait.
                return None;
            }
            if last.is_some() {
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    _ = d.shutdown.changed() => return None,
                }
            }
            let now = fingerprint(&d).await;
            if last.as_ref() != Some(&now) {
                let event = Event::default().event("changed").data(now.clone());
                return Some((Ok(event), (d, Some(now))));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
