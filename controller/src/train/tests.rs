//! Trainer tests against the committed fixtures, and the tract round trip.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn sensor() -> Dataset {
    Dataset::from_csv_path(&fixtures().join("data/sensor_reference.csv"), "label").unwrap()
}

fn load_tract(bytes: &[u8]) -> TractResult<Arc<TypedRunnableModel>> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])?
        .into_optimized()?
        .into_runnable()
}

/// Runs `rows` through a model with a `[N, F]` float input; returns every
/// output as a tensor.
fn run_tract(plan: &Arc<TypedRunnableModel>, rows: &[Vec<f32>]) -> TractResult<TVec<TValue>> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let input = Tensor::from_shape(&[rows.len(), rows[0].len()], &flat)?;
    plan.run(tvec!(input.into()))
}

fn subset(data: &Dataset, rows: std::ops::Range<usize>) -> Dataset {
    Dataset {
        rows: data.rows[rows.clone()].to_vec(),
        labels: data.labels[rows].to_vec(),
        ..data.clone()
    }
}

#[test]
fn sensor_fixture_parses() {
    let data = sensor();
    assert_eq!(
        data.feature_names,
        ["temp", "vibration", "current", "humidity"]
    );
    assert_eq!(data.classes, ["fault", "normal", "warning"]);
    assert_eq!(data.rows.len(), 2000);
}

#[test]
fn trains_on_sensor_reference() {
    let data = sensor();
    let report = train(&data, None, &TrainOptions::default()).unwrap();
    assert!(report.holdout_accuracy >= 0.8, "{report:?}");
    assert!(report.train_accuracy >= 0.8, "{report:?}");
    assert_eq!(report.holdout_rows + report.train_rows, data.rows.len());
    assert_eq!(report.holdout_rows, 399); // floor(0.2 * n) per class
    assert_eq!(report.dataset_sha256, data.sha256_hex());

    let again = train(&data, None, &TrainOptions::default()).unwrap();
    assert_eq!(again, report, "training must be deterministic");
}

#[test]
fn seed_changes_the_split_not_the_quality() {
    let data = sensor();
    let a = train(&data, None, &TrainOptions::default()).unwrap();
    let opts = TrainOptions {
        seed: 99,
        ..TrainOptions::default()
    };
    let b = train(&data, None, &opts).unwrap();
    assert_ne!(a.model, b.model);
    assert!(b.holdout_accuracy >= 0.8);
}

#[test]
fn no_holdout_reports_nan() {
    let opts = TrainOptions {
        holdout_fraction: 0.0,
        epochs: 5,
        ..TrainOptions::default()
    };
    let report = train(&sensor(), None, &opts).unwrap();
    assert_eq!(report.holdout_rows, 0);
    assert!(report.holdout_accuracy.is_nan());
}

#[test]
fn warm_start_keeps_the_base_function() {
    let data = sensor();
    let base = train(&subset(&data, 0..1000), None, &TrainOptions::default()).unwrap();
    let zero_epochs = TrainOptions {
        epochs: 0,
        ..TrainOptions::default()
    };
    // Different data means a different standardisation; the rebased start
    // must still compute the same probabilities as the base.
    let start = train(&subset(&data, 1000..2000), Some(&base.model), &zero_epochs).unwrap();
    for row in &data.rows[..50] {
        let (p, q) = (
            base.model.predict_proba(row),
            start.model.predict_proba(row),
        );
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() < 1e-4, "{p:?} vs {q:?}");
        }
    }
}

#[test]
fn warm_start_converges_faster_than_cold() {
    let data = sensor();
    let base = train(&subset(&data, 0..1000), None, &TrainOptions::default()).unwrap();
    let few = TrainOptions {
        epochs: 10,
        ..TrainOptions::default()
    };
    let fresh = subset(&data, 1000..2000);
    let warm = train(&fresh, Some(&base.model), &few).unwrap();
    let cold = train(&fresh, None, &few).unwrap();
    let full = train(&fresh, None, &TrainOptions::default()).unwrap();
    assert!(warm.holdout_accuracy >= 0.8, "{warm:?}");
    assert!(
        warm.train_loss < cold.train_loss,
        "warm {} cold {}",
        warm.train_loss,
        cold.train_loss
    );
    assert!(
        warm.train_loss < full.train_loss * 1.1,
        "warm {} full {}",
        warm.train_loss,
        full.train_loss
    );
}

#[test]
fn base_must_match_features_and_classes() {
    let data = sensor();
    let base = train(
        &data,
        None,
        &TrainOptions {
            epochs: 1,
            ..TrainOptions::default()
        },
    )
    .unwrap()
    .model;

    let mut other = base.clone();
    other.feature_names.swap(0, 1);
    let err = train(&data, Some(&other), &TrainOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::BaseMismatch {
                what: "features",
                ..
            }
        ),
        "{err:?}"
    );

    let mut other = base.clone();
    other.classes[0] = "broken".into();
    let err = train(&data, Some(&other), &TrainOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::BaseMismatch {
                what: "classes",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn rejects_bad_options_and_datasets() {
    let data = sensor();
    for opts in [
        TrainOptions {
            learning_rate: 0.0,
            ..TrainOptions::default()
        },
        TrainOptions {
            learning_rate: f32::NAN,
            ..TrainOptions::default()
        },
        TrainOptions {
            l2: -1.0,
            ..TrainOptions::default()
        },
        TrainOptions {
            holdout_fraction: 1.0,
            ..TrainOptions::default()
        },
    ] {
        assert!(matches!(
            train(&data, None, &opts),
            Err(TrainError::InvalidOptions(_))
        ));
    }
    let mut broken = data.clone();
    broken.labels[3] = 7;
    assert!(matches!(
        train(&broken, None, &TrainOptions::default()),
        Err(TrainError::InvalidDataset(_))
    ));
}

#[test]
fn onnx_matches_predict_proba_in_tract() {
    let data = sensor();
    let model = train(&data, None, &TrainOptions::default()).unwrap().model;
    let bytes = to_onnx(&model);
    let plan = load_tract(&bytes).unwrap();
    let rows = &data.rows[..50];
    let out = run_tract(&plan, rows).unwrap();
    let labels = out[0].to_plain_array_view::<i64>().unwrap();
    let probs = out[1].to_plain_array_view::<f32>().unwrap();
    assert_eq!(labels.shape(), [50]);
    assert_eq!(probs.shape(), [50, 3]);
    for (i, row) in rows.iter().enumerate() {
        let want = model.predict_proba(row);
        for (k, w) in want.iter().enumerate() {
            let got = probs[[i, k]];
            assert!((got - w).abs() < 1e-4, "row {i} class {k}: {got} vs {w}");
        }
        assert_eq!(labels[i] as usize, model.predict(row), "row {i}");
    }
}

#[test]
fn onnx_round_trips_through_load_base() {
    let model = train(
        &sensor(),
        None,
        &TrainOptions {
            epochs: 20,
            ..TrainOptions::default()
        },
    )
    .unwrap()
    .model;
    assert_eq!(load_base_from_onnx(&to_onnx(&model)).unwrap(), model);
}

#[test]
fn load_base_refuses_other_models() {
    let v1 = std::fs::read(fixtures().join("models/sensor_clf_v1.onnx")).unwrap();
    assert!(matches!(
        load_base_from_onnx(&v1),
        Err(TrainError::NotDroverModel(_))
    ));
    assert!(matches!(
        load_base_from_onnx(b"\xff\xff\xff not protobuf"),
        Err(TrainError::OnnxDecode(_))
    ));
}

#[test]
fn every_fixture_runs_in_tract_except_unsupported_op() {
    let data = sensor();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(fixtures().join("models")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "onnx") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let plan = load_tract(&bytes);
        if name == "unsupported_op.onnx" {
            let Err(err) = plan else {
                panic!("tract must refuse unsupported_op.onnx");
            };
            let chain = format!("{err:?}");
            // The node is also named "Scaler"; match the op's own form.
            assert!(
                chain.contains("Unimplemented(Scaler)"),
                "error does not name the op: {chain}"
            );
        } else if name == "unknown_op.onnx" {
            // An operator nobody implements (com.microsoft::FusedMatMul).
            let Err(err) = plan else {
                panic!("tract must refuse unknown_op.onnx");
            };
            assert!(format!("{err:?}").contains("FusedMatMul"), "{err:?}");
        } else {
            let plan = plan.unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let out = run_tract(&plan, &data.rows[..1]).unwrap();
            if name.starts_with("regressor") {
                assert_eq!(out[0].shape(), [1, 1], "{name}");
                assert!(out[0].to_plain_array_view::<f32>().unwrap()[[0, 0]].is_finite());
            } else {
                assert_eq!(out[0].shape(), [1], "{name}");
                assert_eq!(out[1].shape(), [1, 3], "{name}");
                assert!(
                    out[0].to_plain_array_view::<i64>().unwrap()[0] < 3,
                    "{name}"
                );
            }
        }
        seen.push(name);
    }
    seen.sort();
    for want in [
        "regressor_v1.onnx",
        "sensor_clf_bad.onnx",
        "sensor_clf_slow.onnx",
        "sensor_clf_v1.onnx",
        "sensor_clf_v2.onnx",
        "unsupported_op.onnx",
    ] {
        assert!(
            seen.iter().any(|s| s == want),
            "missing fixture {want}: {seen:?}"
        );
    }
}

fn fixture_accuracy(name: &str, data: &Dataset) -> (f64, Vec<i64>) {
    let bytes = std::fs::read(fixtures().join("models").join(name)).unwrap();
    let out = run_tract(&load_tract(&bytes).unwrap(), &data.rows).unwrap();
    let labels: Vec<i64> = out[0]
        .to_plain_array_view::<i64>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let correct = labels
        .iter()
        .zip(&data.labels)
        .filter(|(p, y)| **p as usize == **y)
        .count();
    (correct as f64 / labels.len() as f64, labels)
}

#[test]
fn fixture_models_mean_what_their_names_say() {
    let data = sensor();
    let (v1, v1_labels) = fixture_accuracy("sensor_clf_v1.onnx", &data);
    let (v2, _) = fixture_accuracy("sensor_clf_v2.onnx", &data);
    let (bad, _) = fixture_accuracy("sensor_clf_bad.onnx", &data);
    let (slow, slow_labels) = fixture_accuracy("sensor_clf_slow.onnx", &data);
    assert!(v1 >= 0.85 && v2 >= 0.85, "v1 {v1} v2 {v2}");
    assert!(bad <= 0.45, "bad {bad}");
    assert_eq!(slow, v1);
    assert_eq!(slow_labels, v1_labels);
}

/// Regenerates `fixtures/models/trained_by_drover.onnx`:
/// `cargo test -p drover-controller --lib train::tests::write_trained_by_drover_fixture -- --ignored`
#[test]
#[ignore = "writes into fixtures/; run by hand to regenerate"]
fn write_trained_by_drover_fixture() {
    let report = train(&sensor(), None, &TrainOptions::default()).unwrap();
    std::fs::write(
        fixtures().join("models/trained_by_drover.onnx"),
        to_onnx(&report.model),
    )
    .unwrap();
    println!(
        "train {:.3} holdout {:.3} loss {:.4}",
        report.train_accuracy, report.holdout_accuracy, report.train_loss
    );
}

/// Prints per-row latency of the fast and slow fixtures in tract:
/// `cargo test --release -p drover-controller --lib train::tests::fixture_timings -- --ignored --nocapture`
#[test]
#[ignore = "timing, not a check"]
fn fixture_timings() {
    let data = sensor();
    for name in [
        "sensor_clf_v1.onnx",
        "sensor_clf_slow.onnx",
        "trained_by_drover.onnx",
    ] {
        let Ok(bytes) = std::fs::read(fixtures().join("models").join(name)) else {
            continue;
        };
        let plan = load_tract(&bytes).unwrap();
        let rows = &data.rows[..1];
        for _ in 0..20 {
            run_tract(&plan, rows).unwrap();
        }
        let n = 200;
        let start = Instant::now();
        for _ in 0..n {
            run_tract(&plan, rows).unwrap();
        }
        println!("{name}: {:?} per row", start.elapsed() / n);
    }
}

/// Raw skl2onnx exports leave the batch dim anonymous (the fixtures name it);
/// tract then needs the input fact spelled out, as the agent must do for
/// models pushed straight from sklearn.
#[test]
fn anonymous_batch_dim_loads_with_an_explicit_input_fact() {
    use prost::Message;
    let bytes = std::fs::read(fixtures().join("models/sensor_clf_v1.onnx")).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            value.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            panic!("tensor type expected");
        };
        t.shape.as_mut().unwrap().dim[0].value = None;
    }
    let raw = proto.encode_to_vec();
    assert!(load_tract(&raw).is_err());

    let onnx = tract_onnx::onnx();
    let mut model = onnx.model_for_read(&mut &raw[..]).unwrap();
    let batch = model.symbols.sym("N");
    model
        .set_input_fact(0, f32::fact(&[batch.to_dim(), 4.to_dim()]).into())
        .unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let out = run_tract(&plan, &sensor().rows[..3]).unwrap();
    assert_eq!(out[1].shape(), [3, 3]);
}

#[test]
fn many_correlated_features_do_not_diverge() {
    // 40 near-copies of each sensor: a fixed step size that suits 4 features
    // would overshoot here; the curvature-scaled step must not.
    let data = sensor();
    let copies = 40;
    let wide = Dataset {
        feature_names: (0..4 * copies).map(|i| format!("f{i}")).collect(),
        rows: data
            .rows
            .iter()
            .map(|r| {
                (0..copies)
                    .flat_map(|k| r.iter().map(move |v| v * (1.0 + k as f32 * 1e-3)))
                    .collect()
            })
            .collect(),
        ..data.clone()
    };
    let opts = TrainOptions {
        epochs: 100,
        learning_rate: 2.0,
        ..TrainOptions::default()
    };
    let report = train(&wide, None, &opts).unwrap();
    assert!(
        report.train_loss.is_finite() && report.train_loss < 0.5,
        "{}",
        report.train_loss
    );
    assert!(report.holdout_accuracy >= 0.8, "{report:?}");
}
