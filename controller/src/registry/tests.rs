//! Registry tests on the committed ONNX fixtures and reference CSVs.

use std::path::{Path, PathBuf};

use drover_protocol::manifest::{Task, bin_index};
use drover_protocol::{Ed25519Signer, ModelName, Sign, Timestamp, Version};

use super::inspect::{InspectError, LoadedModel, tensor_f32};
use super::store::ModelStore;
use super::*;
use crate::db::Db;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap()
}

fn push_req(model: &str, csv: Option<&str>) -> PushRequest {
    PushRequest {
        name: Some(ModelName::new("sensor").unwrap()),
        onnx: read(model),
        reference_csv: csv.map(read),
        ..PushRequest::default()
    }
}

const NOW: Timestamp = Timestamp(1_800_000_000_000);

#[test]
fn classifier_manifest_from_fixture() {
    let m = build_manifest(
        &push_req(
            "models/sensor_clf_v1.onnx",
            Some("data/sensor_reference.csv"),
        ),
        NOW,
    )
    .unwrap();
    assert_eq!(m.inputs[0].name, "input");
    assert_eq!(m.inputs[0].shape, vec![None, Some(4)]);
    match &m.task {
        Task::Classification {
            labels,
            probabilities,
            label,
        } => {
            assert_eq!(labels, &["fault", "normal", "warning"]);
            assert_eq!(probabilities, "probabilities");
            assert_eq!(label.as_deref(), Some("label"));
        }
        other => panic!("expected classification, got {other:?}"),
    }
    let bytes = read("models/sensor_clf_v1.onnx");
    assert_eq!(m.artifact.sha256, drover_protocol::Sha256::of(&bytes));
    assert_eq!(m.artifact.size, bytes.len() as u64);
    assert_eq!(
        m.lineage.dataset_sha256,
        Some(drover_protocol::Sha256::of(&read(
            "data/sensor_reference.csv"
        )))
    );
    let acc = m.lineage.eval_metrics["accuracy"];
    assert!((0.7..=1.0).contains(&acc), "accuracy {acc}");
    assert_eq!(m.created_at, NOW);
    assert_eq!(m.expires_at, NOW.plus_ms(DEFAULT_VALIDITY_MS));
    assert_eq!(m.min_agent_version, DEFAULT_MIN_AGENT_VERSION);

    // Reference profile: 4 features, 9 sorted decile edges, frequencies sum to 1.
    let names: Vec<_> = m
        .reference
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["temp", "vibration", "current", "humidity"]);
    for f in &m.reference.features {
        assert_eq!(f.bins.edges.len(), 9, "{}", f.name);
        assert!(f.bins.edges.windows(2).all(|w| w[0] < w[1]), "{}", f.name);
        assert_eq!(f.bins.frequencies.len(), 10);
        let sum: f32 = f.bins.frequencies.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{}: {sum}", f.name);
    }
    // The profile is what an agent would measure on the same rows.
    let data = profile::parse_csv(&read("data/sensor_reference.csv"), 4).unwrap();
    let temp = &m.reference.features[0].bins;
    let mut counts = vec![0u32; temp.frequencies.len()];
    for r in &data.rows {
        counts[bin_index(&temp.edges, r[0])] += 1;
    }
    for (c, f) in counts.iter().zip(&temp.frequencies) {
        assert!((*c as f32 / data.rows.len() as f32 - f).abs() < 1e-6);
    }
    // Output distribution: 3 class frequencies summing to 1.
    assert!(m.reference.output.edges.is_empty());
    assert_eq!(m.reference.output.frequencies.len(), 3);
    let sum: f32 = m.reference.output.frequencies.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4);
}

#[test]
fn health_checks_reproduce_and_cover_classes() {
    let m = build_manifest(
        &push_req(
            "models/sensor_clf_v1.onnx",
            Some("data/sensor_reference.csv"),
        ),
        NOW,
    )
    .unwrap();
    assert_eq!(m.health_checks.samples.len(), profile::HEALTH_SAMPLES);
    assert_eq!(m.health_checks.tolerance, HEALTH_TOLERANCE);
    let model = LoadedModel::load(&read("models/sensor_clf_v1.onnx")).unwrap();
    let rows: Vec<Vec<f32>> = m
        .health_checks
        .samples
        .iter()
        .map(|s| s.input.clone())
        .collect();
    let out = model.run(&rows).unwrap();
    let probs = tensor_f32(&out[1]).unwrap();
    let mut classes = std::collections::BTreeSet::new();
    for (i, s) in m.health_checks.samples.iter().enumerate() {
        assert_eq!(s.expected.len(), 3);
        for (a, b) in s.expected.iter().zip(&probs[i * 3..i * 3 + 3]) {
            assert!((a - b).abs() <= m.health_checks.tolerance);
        }
        let argmax = (0..3)
            .max_by(|a, b| s.expected[*a].total_cmp(&s.expected[*b]))
            .unwrap();
        classes.insert(argmax);
    }
    assert_eq!(
        classes.len(),
        3,
        "health checks must cover every predicted class"
    );
}

#[test]
fn regressor_manifest() {
    let m = build_manifest(&push_req("models/regressor_v1.onnx", None), NOW).unwrap();
    assert!(matches!(&m.task, Task::Regression { output } if output == "variable"));
    assert_eq!(m.health_checks.samples.len(), profile::HEALTH_SAMPLES);
    assert_eq!(m.health_checks.samples[0].expected.len(), 1);
    assert!(m.reference.features.is_empty());
}

#[test]
fn labels_flag_and_mismatch() {
    let mut req = push_req(
        "models/sensor_clf_v1.onnx",
        Some("data/sensor_reference.csv"),
    );
    req.labels = Some(vec!["fault".into(), "normal".into(), "warning".into()]);
    assert!(build_manifest(&req, NOW).is_ok());
    req.labels = Some(vec!["a".into(), "b".into()]);
    let err = build_manifest(&req, NOW).unwrap_err().to_string();
    assert!(err.contains("2 classes") && err.contains("3"), "{err}");
    let mut no_csv = push_req("models/sensor_clf_v1.onnx", None);
    no_csv.labels = None;
    let m = build_manifest(&no_csv, NOW).unwrap();
    // The graph's own int64 class labels, not made-up names.
    assert!(
        matches!(&m.task, Task::Classification { labels, .. } if labels == &["0", "1", "2"]),
        "{:?}",
        m.task
    );
}

#[test]
fn bad_inputs_are_refused_with_specific_errors() {
    match build_manifest(&push_req("models/unknown_op.onnx", None), NOW) {
        Err(RegistryError::Model(InspectError::UnsupportedOperator { op, detail })) => {
            assert_eq!(op, "FusedMatMul");
            assert!(detail.contains("fused_matmul_0"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let mut not_onnx = push_req("models/sensor_clf_v1.onnx", None);
    not_onnx.onnx = read("data/sensor_reference.csv");
    assert!(matches!(
        build_manifest(&not_onnx, NOW),
        Err(RegistryError::Model(InspectError::NotOnnx(_)))
    ));
    match build_manifest(
        &push_req(
            "models/sensor_clf_v1.onnx",
            Some("data/sensor_reference_3cols.csv"),
        ),
        NOW,
    ) {
        Err(RegistryError::Csv(profile::CsvError::ColumnCount {
            expected, found, ..
        })) => {
            assert_eq!((expected, found), (4, 3));
        }
        other => panic!("{other:?}"),
    }
}

fn store() -> (tempfile::TempDir, ModelStore) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("d.db")).unwrap();
    let s = ModelStore::new(db, dir.path()).unwrap();
    (dir, s)
}

#[test]
fn versions_increase_aliases_move_and_artifacts_are_content_addressed() {
    let (_dir, s) = store();
    let key = Ed25519Signer::from_seed([3; 32]);
    let name = ModelName::new("sensor").unwrap();
    let v1 = build_manifest(&push_req("models/sensor_clf_v1.onnx", None), NOW).unwrap();
    let a = s
        .insert(
            v1.clone(),
            &read("models/sensor_clf_v1.onnx"),
            &key,
            Some("production"),
            NOW,
        )
        .unwrap();
    assert_eq!(a.manifest.version, Version(1));
    assert_eq!(a.signed.verify(&key.public_key()).unwrap(), a.manifest);
    let path = s.artifact_path(&a.manifest.artifact.sha256);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        read("models/sensor_clf_v1.onnx")
    );

    let mut v2 = build_manifest(&push_req("models/sensor_clf_v2.onnx", None), NOW).unwrap();
    v2.lineage.parent = Some(Version(1));
    let b = s
        .insert(
            v2.clone(),
            &read("models/sensor_clf_v2.onnx"),
            &key,
            None,
            NOW,
        )
        .unwrap();
    assert_eq!(b.manifest.version, Version(2));
    assert_eq!(s.resolve(&name, "production").unwrap(), Version(1));
    s.set_alias(&name, "production", Version(2), NOW).unwrap();
    assert_eq!(s.resolve(&name, "production").unwrap(), Version(2));
    assert!(
        s.get(&name, Version(1))
            .unwrap()
            .unwrap()
            .aliases
            .is_empty()
    );
    assert!(matches!(
        s.set_alias(&name, "production", Version(9), NOW),
        Err(RegistryError::NotFound(_))
    ));
    assert!(s.set_alias(&name, "Bad Alias", Version(1), NOW).is_err());
    let list = s.list().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].aliases, ["production"]);
    assert_eq!(list[1].parent, Some(1));

    // Unknown parent: refused, nothing stored (and no new artifact left behind).
    let mut orphan = build_manifest(&push_req("models/regressor_v1.onnx", None), NOW).unwrap();
    orphan.lineage.parent = Some(Version(7));
    let orphan_bytes = read("models/regressor_v1.onnx");
    assert!(matches!(
        s.insert(orphan, &orphan_bytes, &key, None, NOW),
        Err(RegistryError::Invalid(_))
    ));
    assert!(
        !s.artifact_path(&drover_protocol::Sha256::of(&orphan_bytes))
            .exists()
    );
    assert_eq!(s.list().unwrap().len(), 2);

    // Re-signing after a models-key rotation keeps bodies, replaces signatures.
    let fresh = Ed25519Signer::from_seed([4; 32]);
    assert_eq!(s.resign_all(&fresh).unwrap(), 2);
    let again = s.get(&name, Version(1)).unwrap().unwrap();
    assert_eq!(again.signed.body, a.signed.body);
    assert!(again.signed.verify(&fresh.public_key()).is_ok());
}

#[test]
fn a_stateful_multi_input_model_pushes_without_reference() {
    let req = push_req("conformance/lstm_stream/model.onnx", None);
    let m = build_manifest(&req, NOW).unwrap();
    let names: Vec<_> = m.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["input", "h", "c"]);
    assert_eq!(m.inputs[0].shape, vec![None, None, Some(16)]);
    assert!(matches!(&m.task, Task::Regression { output } if output == "output"));
    assert!(m.health_checks.samples.is_empty());
    // A CSV cannot describe these inputs: refused, saying why.
    let mut with_csv = req.clone();
    with_csv.reference_csv = Some(read("data/sensor_reference.csv"));
    let e = build_manifest(&with_csv, NOW).unwrap_err().to_string();
    assert!(e.contains("give the reference as .npz"), "{e}");
    // An .npz of the three inputs is one reference request: each input is
    // profiled, and the health check runs that real request.
    let arrays: Vec<(&str, drover_onnx::Tensor)> = ["input", "h", "c"]
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let a =
                drover_onnx::npy::read_npy(&read(&format!("conformance/lstm_stream/in_{k}.npy")))
                    .unwrap();
            (*n, a.to_tensor().unwrap())
        })
        .collect();
    let npz = drover_onnx::npy::write_npz(arrays.iter().map(|(n, t)| (*n, t))).unwrap();
    let mut with_npz = req;
    with_npz.reference_arrays = vec![npz];
    let m = build_manifest(&with_npz, NOW).unwrap();
    let names: Vec<_> = m
        .reference
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "input.mean",
            "input.std",
            "h.mean",
            "h.std",
            "c.mean",
            "c.std"
        ]
    );
    assert_eq!(m.health_checks.samples.len(), 1);
    assert_eq!(m.health_checks.samples[0].inputs.len(), 3);
}

#[test]
fn fixed_inputs_leave_the_schema_and_are_recorded() {
    let mut req = push_req("conformance/vad_if_sr16k/model.onnx", None);
    let m = build_manifest(&req, NOW).unwrap();
    assert!(m.inputs.iter().any(|i| i.name == "sr"));
    req.load.fix_inputs = vec!["sr=16000".into()];
    let m = build_manifest(&req, NOW).unwrap();
    let names: Vec<_> = m.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["input", "state"]);
    assert_eq!(m.load.fix_inputs, ["sr=16000"]);
    req.load.fix_inputs = vec!["rate=16000".into()];
    match build_manifest(&req, NOW) {
        Err(RegistryError::Model(InspectError::Invalid(e))) => assert!(e.contains("rate"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_manifest_always_fits_a_deploy_command() {
    let bytes = read("models/sensor_clf_v1.onnx");
    let mut m = drover_protocol::testkit::manifest("big", 1, &bytes, NOW);
    // 8 samples of 20,000 floats: ~640 KB, far over one Down message.
    m.health_checks.samples = (0..8)
        .map(|i| drover_protocol::manifest::HealthSample {
            input: vec![i as f32; 20_000],
            expected: vec![0.5; 3],
            inputs: vec![],
        })
        .collect();
    let fitted = fit_down_message(m.clone()).unwrap();
    let kept = fitted.health_checks.samples.len();
    assert!((1..8).contains(&kept), "{kept}");
    assert_eq!(
        fitted.lineage.eval_metrics["health_samples_trimmed"],
        (8 - kept) as f64
    );
    // Signed and wrapped in a Deploy command it still encodes as a Down message.
    let key = Ed25519Signer::from_seed([7; 32]);
    let signed = drover_protocol::Signed::sign(&fitted, &key).unwrap();
    let device = drover_protocol::DeviceId::new("dev-1").unwrap();
    let cmd = drover_protocol::testkit::command(
        &device,
        1,
        NOW,
        drover_protocol::Action::Deploy { manifest: signed },
    );
    let cmd = drover_protocol::Signed::sign(&cmd, &key).unwrap();
    drover_protocol::codec::encode_down(&drover_protocol::messages::Down::Command(cmd)).unwrap();
    // A reference profile too large on its own: refused with the sizes.
    m.health_checks.samples.clear();
    m.reference.features = (0..40_000)
        .map(|i| drover_protocol::manifest::FeatureProfile {
            name: format!("feature_{i}"),
            bins: Default::default(),
        })
        .collect();
    let e = fit_down_message(m).unwrap_err().to_string();
    assert!(e.contains("without any health-check sample"), "{e}");
}

#[test]
fn tensor_reference_from_npz_profiles_channels_and_health_checks_real_samples() {
    let req = PushRequest {
        name: Some(ModelName::new("image").unwrap()),
        onnx: read("image/image_tiny.onnx"),
        reference_arrays: vec![read("image/reference.npz")],
        ..PushRequest::default()
    };
    let m = build_manifest(&req, NOW).unwrap();
    assert_eq!(m.reference.features.len(), 6);
    assert_eq!(m.reference.sources.len(), 6);
    assert_eq!(m.reference.features[2].name, "image[1].mean");
    let s = &m.reference.sources[2];
    assert_eq!(
        (s.input.as_str(), s.channel_axis, s.channel),
        ("image", Some(1), 1)
    );
    // Channel 1's per-image means sit around 0.2 (fixtures/image/make_image.py).
    let edges = &m.reference.features[2].bins.edges;
    assert_eq!(edges.len(), 9);
    assert!(edges[4] > 0.15 && edges[4] < 0.25, "{edges:?}");
    assert_eq!(m.lineage.eval_metrics["reference_rows"], 300.0);
    assert_eq!(m.health_checks.samples.len(), profile::HEALTH_SAMPLES);
    assert!(m.lineage.dataset_sha256.is_some());
    // A classifier: the output profile is the predicted class shares.
    assert_eq!(m.reference.output.frequencies.len(), 2);
}

#[test]
fn tensor_references_that_do_not_fit_are_refused_with_the_reason() {
    let base = PushRequest {
        name: Some(ModelName::new("image").unwrap()),
        onnx: read("image/image_tiny.onnx"),
        ..PushRequest::default()
    };
    let refused = |req: PushRequest| build_manifest(&req, NOW).unwrap_err().to_string();
    // Arrays named for another model.
    let msg = refused(PushRequest {
        reference_arrays: vec![read("npz/savez.npz")],
        ..base.clone()
    });
    assert!(msg.contains("\"ids\" that is not an input"), "{msg}");
    // An image without its channel dim.
    let flat = drover_onnx::Tensor::from_shape(&[2, 4], &[0f32; 8]).unwrap();
    let msg = refused(PushRequest {
        reference_arrays: vec![drover_onnx::npy::write_npz([("image", &flat)]).unwrap()],
        ..base.clone()
    });
    assert!(msg.contains("has shape [2, 4]"), "{msg}");
    // A CSV cannot describe an image.
    let msg = refused(PushRequest {
        reference_csv: Some(b"a,b\n1,2\n".to_vec()),
        ..base.clone()
    });
    assert!(msg.contains(".npz"), "{msg}");
    // Not an array file at all.
    let msg = refused(PushRequest {
        reference_arrays: vec![b"hello".to_vec()],
        ..base
    });
    assert!(msg.contains("neither .npy nor .npz"), "{msg}");
}

#[test]
fn a_tabular_model_takes_reference_rows_as_npy() {
    // The CSV's four feature columns as a [rows, 4] float32 .npy.
    let csv = profile::parse_csv(&read("data/sensor_reference.csv"), 4).unwrap();
    let flat: Vec<f32> = csv.rows.iter().flatten().copied().collect();
    let t = drover_onnx::Tensor::from_shape(&[csv.rows.len(), 4], &flat).unwrap();
    let req = PushRequest {
        reference_arrays: vec![drover_onnx::npy::write_npy(&t).unwrap()],
        ..push_req("models/sensor_clf_v1.onnx", None)
    };
    let from_npy = build_manifest(&req, NOW).unwrap();
    let from_csv = build_manifest(
        &push_req(
            "models/sensor_clf_v1.onnx",
            Some("data/sensor_reference.csv"),
        ),
        NOW,
    )
    .unwrap();
    for (a, b) in from_npy
        .reference
        .features
        .iter()
        .zip(&from_csv.reference.features)
    {
        assert_eq!(a.bins, b.bins);
    }
    assert!(from_npy.reference.sources.is_empty());
}

#[test]
fn a_model_on_disk_gives_the_same_manifest_and_is_moved_into_the_store() {
    let (dir, s) = store();
    let key = Ed25519Signer::from_seed([3; 32]);
    let bytes = read("models/sensor_clf_v1.onnx");
    let upload = dir.path().join("upload.part");
    std::fs::write(&upload, &bytes).unwrap();
    let in_memory = push_req(
        "models/sensor_clf_v1.onnx",
        Some("data/sensor_reference.csv"),
    );
    let on_disk = PushRequest {
        onnx: Vec::new(),
        onnx_file: Some(OnnxFile {
            path: upload.clone(),
            sha256: drover_protocol::Sha256::of(&bytes),
            size: bytes.len() as u64,
        }),
        ..in_memory.clone()
    };
    let a = build_manifest(&on_disk, NOW).unwrap();
    assert_eq!(a, build_manifest(&in_memory, NOW).unwrap());
    // Refused before the move: the file is the caller's to remove.
    assert!(
        s.insert_file(a.clone(), &upload, &key, Some("Bad Alias"), NOW)
            .is_err()
    );
    assert!(upload.exists());
    let stored = s.insert_file(a.clone(), &upload, &key, None, NOW).unwrap();
    assert!(!upload.exists(), "moved, not copied");
    let artifact = s.artifact_path(&stored.manifest.artifact.sha256);
    assert_eq!(std::fs::read(&artifact).unwrap(), bytes);
    // The same bytes again: the stored artifact stays, the upload goes.
    std::fs::write(&upload, &bytes).unwrap();
    let again = s.insert_file(a, &upload, &key, None, NOW).unwrap();
    assert_eq!(again.manifest.version, Version(2));
    assert!(!upload.exists());
    assert_eq!(std::fs::read(&artifact).unwrap(), bytes);
    // A file that is not ONNX is refused like bytes that are not.
    std::fs::write(&upload, read("data/sensor_reference.csv")).unwrap();
    assert!(matches!(
        build_manifest(&on_disk, NOW),
        Err(RegistryError::Model(InspectError::NotOnnx(_)))
    ));
}

#[test]
fn the_name_agent_is_reserved_for_agent_releases() {
    let mut req = push_req(
        "models/sensor_clf_v1.onnx",
        Some("data/sensor_reference.csv"),
    );
    req.name = Some(ModelName::new("agent").unwrap());
    match build_manifest(&req, NOW) {
        Err(RegistryError::Invalid(msg)) => assert!(msg.contains("reserved"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
