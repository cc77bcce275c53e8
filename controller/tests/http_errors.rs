//! Errors axum writes itself (unknown path, wrong method) come back from
//! the running controller in the API's JSON error shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use drover_controller::http::ErrorBody;
use support::{TestController, token_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods_answer_in_json() {
    let t = TestController::start().await;
    let url = t.url();
    let client = reqwest::Client::new();
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/v1/nope", 404, "not_found"),
        (
            reqwest::Method::DELETE,
            "/v1/models",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::PUT,
            "/v1/rollouts",
            405,
            "method_not_allowed",
        ),
    ] {
        let r = client
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(token_for(&url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let body: ErrorBody = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: not the JSON error shape: {e}"));
        assert_eq!(body.error, code, "{method} {path}");
    }
}
