#!/usr/bin/env python3
"""Prints the directory holding the ai.onnx.ml node tests of the installed
`onnx` package (backend/test/data/node/test_ai_onnx_ml_*: model.onnx and
test_data_set_0/{input,output}_*.pb).

Wheels of recent onnx releases ship the node test *definitions*
(onnx/backend/test/case/node) but not always the generated data; then this
script writes the data from those definitions, exactly as onnx's own
`backend-test-tools generate-data` does, into OUT_DIR (default
target/onnx-node-tests) and prints that.  Exits non-zero when `onnx` is
missing: the Rust test that calls it fails loudly instead of skipping.
"""
import os
import sys

try:
    import onnx
    from onnx import numpy_helper
except ImportError:
    sys.exit("the `onnx` Python package is missing: pip install onnx (scripts/test.sh does)")

PREFIX = "test_ai_onnx_ml_"


def shipped():
    d = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    if os.path.isdir(d) and any(n.startswith(PREFIX) for n in os.listdir(d)):
        return d
    return None


def generate(out):
    # Generating imports every node case of onnx (tens of seconds): keep the
    # data of the same onnx version.
    stamp = os.path.join(out, "onnx-version")
    if os.path.exists(stamp) and open(stamp).read() == onnx.__version__:
        return out
    import onnx.backend.test.case.node as node_cases

    os.makedirs(out, exist_ok=True)
    for case in node_cases.collect_testcases():
        if not case.name.startswith(PREFIX):
            continue
        case_dir = os.path.join(out, case.name)
        os.makedirs(case_dir, exist_ok=True)
        with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(case_dir, f"test_data_set_{i}")
            os.makedirs(ds, exist_ok=True)
            for kind, values, infos in (
                ("input", inputs, case.model.graph.input),
                ("output", outputs, case.model.graph.output),
            ):
                for j, value in enumerate(values):
                    proto = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(value, infos[j].name)
                    with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                        f.write(proto.SerializeToString())
    with open(stamp, "w") as f:
        f.write(onnx.__version__)
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "onnx-node-tests")
    found = shipped() or generate(out)
    print(found)


if __name__ == "__main__":
    main()
