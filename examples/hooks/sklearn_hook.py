#!/usr/bin/env python3
"""Example Drover retraining hook: scikit-learn LogisticRegression -> ONNX.

Drover runs this as an `exec` hook (see README.md next to it). It reads the
job JSON from $DROVER_JOB_FILE (or stdin), trains on the job's dataset CSV,
and writes:

- the ONNX model to $DROVER_OUTPUT (the job's `output_path`),
- evaluation metrics, a JSON object of numbers, to $DROVER_METRICS.

Export rules that keep the model loadable by tract on the devices:

- `zipmap=False`: outputs `label` (int64 [N]) and `probabilities`
  (float [N, C]) instead of a list of dicts, which tract cannot run;
- no `StandardScaler` in the pipeline: skl2onnx exports it as the
  ai.onnx.ml `Scaler` op, which tract does not implement (standardise in
  numpy and fold it into the weights, or use a model that does not need it);
- input named `input`, float [N, F], the batch dimension named `N`;
- class indices follow the job's `classes` list, so `label` means the same
  class number as on the devices.

Exit status 0 means success; anything written to stderr shows up in
`drover retrain show ID`, and its last lines in the failure reason.
"""

import csv
import json
import os
import sys

import numpy as np
import onnx
from onnx import helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

TARGET_OPSET = {"": 13, "ai.onnx.ml": 1}
HOLDOUT_FRACTION = 0.2
SEED = 0


def load_job() -> dict:
    path = os.environ.get("DROVER_JOB_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return json.load(sys.stdin)


def load_dataset(job: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labelled rows of the dataset: features in input order, class indices."""
    features = job["feature_names"]
    label_column = job["label_column"]
    classes = job["classes"]
    index = {name: i for i, name in enumerate(classes)}
    rows, labels = [], []
    with open(job["dataset"]["path"], newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            label = (record.get(label_column) or "").strip()
            if not label:
                # Captured samples without ground truth: not usable here.
                continue
            if label not in index:
                raise SystemExit(f"label {label!r} is not one of the job's classes {classes}")
            rows.append([float(record[name]) for name in features])
            labels.append(index[label])
    if not rows:
        raise SystemExit("the dataset has no labelled rows")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64), classes


def split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified holdout indices (each class keeps at least one training row)."""
    rng = np.random.default_rng(SEED)
    train, holdout = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        take = min(int(len(rows) * HOLDOUT_FRACTION), len(rows) - 1)
        holdout.extend(rows[:take])
        train.extend(rows[take:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(holdout, dtype=np.int64))


def name_batch_dim(model: onnx.ModelProto) -> None:
    """skl2onnx leaves the batch dimension anonymous; name it `N` so tract
    can type the graph without being told the input shape."""
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and not dims[0].dim_param:
            dims[0].dim_param = "N"


def export(clf: LogisticRegression, job: dict) -> onnx.ModelProto:
    features = job["feature_names"]
    model = convert_sklearn(
        clf,
        name=f"{job['model']}-retrain-{job['job_id']}",
        initial_types=[("input", FloatTensorType([None, len(features)]))],
        options={id(clf): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    name_batch_dim(model)
    # skl2onnx may list the default domain twice; keep one entry per domain.
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    for key, value in {
        "drover.features": ",".join(features),
        "drover.classes": ",".join(job["classes"]),
    }.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    return model


def main() -> None:
    job = load_job()
    if job.get("task") != "classification":
        raise SystemExit("this example trains classifiers only")
    x, y, classes = load_dataset(job)
    present = sorted(set(y.tolist()))
    if present != list(range(len(classes))):
        raise SystemExit(f"every class needs labelled rows; present: {present} of {classes}")
    train, holdout = split(y)
    print(f"job {job['job_id']}: {len(y)} labelled rows, {x.shape[1]} features, "
          f"classes {classes}, holdout {len(holdout)}")

    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(x[train], y[train])
    metrics = {
        "train_accuracy": float(clf.score(x[train], y[train])),
        "train_rows": float(len(train)),
        "holdout_rows": float(len(holdout)),
    }
    if len(holdout):
        metrics["holdout_accuracy"] = float(clf.score(x[holdout], y[holdout]))
    print(json.dumps(metrics))

    model = export(clf, job)
    output = os.environ.get("DROVER_OUTPUT", job["output_path"])
    with open(output, "wb") as f:
        f.write(model.SerializeToString())
    with open(os.environ.get("DROVER_METRICS", job["metrics_path"]), "w", encoding="utf-8") as f:
        json.dump(metrics, f)


if __name__ == "__main__":
    main()
