//! The ai.onnx.ml node tests the `onnx` Python package defines, for every
//! ai.onnx.ml operator Drover registers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{compare, workspace};
use drover_onnx::{LoadOptions, ML_OPERATORS, Model, Tensor};
use prost::Message;

fn node_test_dir() -> PathBuf {
    let out = workspace().join("target/onnx-node-tests");
    let script = workspace().join("scripts/onnx_ml_node_tests.py");
    let res = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to locate the onnx node tests: {e}"));
    assert!(
        res.status.success(),
        "{} failed (is the `onnx` Python package installed? scripts/test.sh installs it):\n{}",
        script.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&res.stdout).trim())
}

fn read_pb(path: &std::path::Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let proto = tract_onnx::pb::TensorProto::decode(&*bytes).unwrap();
    tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, &proto, None)
        .unwrap()
}

/// The op a node test exercises, from its model.
fn op_of(model: &[u8]) -> String {
    let proto = tract_onnx::pb::ModelProto::decode(model).unwrap();
    proto.graph.unwrap().node[0].op_type.clone()
}

#[test]
fn onnx_ml_node_tests_pass_for_every_registered_op() {
    let dir = node_test_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("test_ai_onnx_ml_")
        })
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no test_ai_onnx_ml_* in {}",
        dir.display()
    );
    let mut report = vec![];
    let mut failures = vec![];
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(case.join("model.onnx")).unwrap();
        let op = op_of(&bytes);
        if !ML_OPERATORS.contains(&op.as_str()) {
            report.push(format!("{name} ({op}): not a Drover op, not run"));
            continue;
        }
        let result = (|| -> Result<(), String> {
            let model = Model::load(&bytes, &LoadOptions::default()).map_err(|e| e.to_string())?;
            let mut data_sets: Vec<PathBuf> = std::fs::read_dir(case)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect();
            data_sets.sort();
            for ds in data_sets {
                let inputs = model
                    .schema()
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.name.clone(), read_pb(&ds.join(format!("input_{i}.pb")))))
                    .collect();
                let outputs = model.run(inputs).map_err(|e| e.to_string())?;
                for (i, (oname, got)) in outputs.iter().enumerate() {
                    let want = read_pb(&ds.join(format!("output_{i}.pb")));
                    compare(oname, got, &want)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => report.push(format!("{name} ({op}): pass")),
            Err(e) => {
                report.push(format!("{name} ({op}): FAIL {e}"));
                failures.push(name);
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "node tests failing: {failures:?}\n{}",
        report.join("\n")
    );
}
