//! The binary request forms (`.npy`, `.npz`, an `.npz` answer) and the body
//! limit sized from the model's inputs, over HTTP and in-process.

use serde_json::{Value, json};

use drover_agent::InferRequest;
use drover_agent::infer::{InferError, InputValues, NamedInput};
use drover_agent::input_limit::{BodyFormat, InputLimits, MAX_BATCH};
use drover_onnx::Tensor;
use drover_onnx::npy::{self, NpyData};

use crate::support::{ROWS, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npy_and_npz_bodies_are_served_like_json() {
    let s = Setup::start("binary").await;
    let http = reqwest::Client::new();
    let api = s.api();
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    let infer = || http.post(format!("{api}/v1/infer"));

    let json_answer: Value = infer()
        .json(&json!({"data": ROWS[0]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // One array as .npy: the model's only input.
    let row = Tensor::from_shape(&[1, 4], &ROWS[0]).unwrap();
    let r = infer()
        .header("content-type", "application/x-npy")
        .body(npy::write_npy(&row).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let npy_answer: Value = r.json().await.unwrap();
    assert_eq!(npy_answer["label"], json_answer["label"]);
    assert_eq!(npy_answer["outputs"], json_answer["outputs"]);

    // Two rows by name as .npz, answered as .npz.
    let two: Vec<f32> = ROWS[..2].iter().flatten().copied().collect();
    let batch = Tensor::from_shape(&[2, 4], &two).unwrap();
    let r = infer()
        .header("content-type", "application/x-npz")
        .header("accept", "application/x-npz")
        .body(npy::write_npz([("input", &batch)]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-npz");
    assert!(
        r.headers()["x-drover-model"]
            .to_str()
            .unwrap()
            .starts_with("sensor@1")
    );
    let outs = npy::read_npz(&r.bytes().await.unwrap(), 1 << 20).unwrap();
    let (name, probs) = &outs[1];
    assert_eq!(name, "probabilities");
    assert_eq!(probs.shape, [2, 3]);
    let NpyData::F32(p) = &probs.data else {
        panic!("{probs:?}")
    };
    let first: Vec<f64> =
        serde_json::from_value(json_answer["outputs"]["probabilities"]["data"].clone()).unwrap();
    for (a, b) in p[..3].iter().zip(&first) {
        assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
    }

    // Refusals, in the JSON error shape.
    let expect = |code: &'static str, status: u16, r: reqwest::Response| async move {
        assert_eq!(r.status().as_u16(), status, "{code}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
    };
    let nan = Tensor::from_shape(&[1, 4], &[f32::NAN, 1.0, 2.0, 3.0]).unwrap();
    expect(
        "non_finite_input",
        400,
        infer()
            .header("content-type", "application/x-npz")
            .body(npy::write_npz([("input", &nan)]).unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    expect(
        "unknown_input",
        400,
        infer()
            .header("content-type", "application/x-npz")
            .body(npy::write_npz([("nope", &row)]).unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    expect(
        "bad_npz",
        400,
        infer()
            .header("content-type", "application/x-npz")
            .body(b"PK\x03\x04 not really a zip".to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    expect(
        "bad_npy",
        400,
        infer()
            .header("content-type", "application/x-npy")
            .body(b"\x93NUMPY garbage".to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_is_sized_from_the_models_inputs() {
    let s = Setup::start("bodylimit").await;
    let http = reqwest::Client::new();
    let api = s.api();
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    let onnx = drover_onnx::Model::load(
        &crate::support::fixture("sensor_clf_v1.onnx"),
        &drover_onnx::LoadOptions::default(),
    )
    .unwrap();
    let limits = InputLimits::from_schema(onnx.schema());
    // Input [N, 4]: a batch of MAX_BATCH rows.
    assert_eq!(limits.max_values("input"), Some(MAX_BATCH * 4));
    let json_limit = limits.body_bytes(BodyFormat::Json);
    assert!(
        json_limit < 1 << 20,
        "{json_limit}: sized from [N, 4], not flat"
    );
    let infer = || http.post(format!("{api}/v1/infer"));

    // A full batch in JSON fits; a body past the limit is 413 before it is read.
    let full: Vec<f32> = (0..MAX_BATCH * 4).map(|i| i as f32 / 100.0).collect();
    let r = infer()
        .json(&json!({"inputs": {"input": {"shape": [MAX_BATCH, 4], "data": full}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let big = format!("{{\"data\": [{}0]}}", "0.5, ".repeat(json_limit / 5));
    let r = infer()
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "body_too_large", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&json_limit.to_string())
    );

    // A compact body under the byte limit with more rows than the shape
    // allows: 413 too_large (the in-process rule).
    let over: Vec<f32> = vec![0.5; (MAX_BATCH + 1) * 4];
    let t = Tensor::from_shape(&[MAX_BATCH + 1, 4], &over).unwrap();
    let r = infer()
        .header("content-type", "application/x-npz")
        .body(npy::write_npz([("input", &t)]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_large", "{body}");

    // The same rule in-process.
    let e = s
        .agent()
        .infer(InferRequest::named(vec![NamedInput {
            name: "input".into(),
            shape: Some(vec![MAX_BATCH + 1, 4]),
            values: InputValues::F32(over),
        }]))
        .unwrap_err();
    assert!(matches!(e, InferError::TooLarge(_)), "{e:?}");

    // Counted.
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in ["body_too_large", "too_large"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains(&format!("error=\"{code}\"")) && l.ends_with(" 1")),
            "{code} not counted:\n{metrics}"
        );
    }
}
