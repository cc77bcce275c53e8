//! `drover ... | head`: a reader that goes away early ends the command
//! quietly and successfully, on every print path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use support::{TestController, drover, fixtures, stderr, token_for};

/// Runs `drover ARGS` with stdout a pipe whose reading end is closed
/// right after the spawn, so its writes fail with EPIPE. (Every command
/// here first talks to the controller or parses its arguments, which takes
/// far longer than closing our end.)
fn run_into_closed_pipe(url: &str, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .env("DROVER_CONTROLLER", url)
        .env("DROVER_TOKEN", token_for(url))
        .env("DROVER_CREDENTIALS", "/nonexistent/drover-test-credentials")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_a_clean_exit_not_a_panic() {
    let t = TestController::start().await;
    let url = t.url();
    let model = fixtures().join("models/sensor_clf_v1.onnx");
    let reference = fixtures().join("data/sensor_reference.csv");
    let o = drover(
        &url,
        &[
            "model",
            "push",
            model.to_str().unwrap(),
            "--name",
            "sensor",
            "--reference",
            reference.to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    for args in [
        &["model", "list"][..],
        &["--output", "json", "model", "list"][..],
        &["model", "show", "sensor@1"][..],
        &["completions", "bash"][..],
    ] {
        let url2 = url.clone();
        let args2: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args2.iter().map(String::as_str).collect();
            run_into_closed_pipe(&url2, &a)
        })
        .await
        .unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(o.status.success(), "{args:?} failed: {:?} {err}", o.status);
    }
}
