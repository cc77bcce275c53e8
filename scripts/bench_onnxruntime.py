#!/usr/bin/env python3
"""onnxruntime's single-thread latency on every conformance case (issue #12).

Run from the repository root after `pip install -r fixtures/requirements-conformance.txt`:

    python3 scripts/bench_onnxruntime.py                 # every case in the index
    python3 scripts/bench_onnxruntime.py bench_rf rf_     # cases whose name starts so
    python3 scripts/bench_onnxruntime.py --min-time 1.0  # longer, steadier runs

For each case in fixtures/conformance/index.json it times `session.run` with
one intra-op and one inter-op thread and prints p50 (and p90) per call:

- tabular cases (scikit-learn exports: every input is [rows, columns]) at
  batch 1 (the first fixture row) and batch 64 (the fixture rows repeated);
- every other case once per recorded run, on that run's inputs as they are
  (e.g. the CNN at 64x96 and at 128x128, each step of a recurrent stream).

The table goes to stdout and the numbers to target/bench/onnxruntime.json, so
a Rust benchmark can put Drover's numbers beside onnxruntime's for the same
model and inputs. Latency is of the in-process call only: no HTTP.

With --drover it then runs, in the same run and on the same cases,
`cargo bench -p drover-agent --bench models` (agent/benches/models.rs):
Drover's p50 in-process (`Agent::infer`) and over the agent's HTTP API
(.npz and JSON bodies, keep-alive socket), printed as one markdown table
beside onnxruntime's p50 (BENCHMARKS.md's model table).
"""

from __future__ import annotations

import os
import sys

# Some machines set these because old OpenBLAS builds misbehave on their CPUs;
# they slow a current numpy's OpenBLAS. Unset only in this process (and before
# numpy is imported, which is when OpenBLAS reads them), never in tests or CI.
# onnxruntime does not use OpenBLAS, so this only keeps numpy's setup work from
# being slowed; the kernel numpy then runs is recorded in the JSON.
_UNSET_BLAS_ENV = {
    k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
}

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "fixtures" / "conformance" / "index.json"
OUT = ROOT / "target" / "bench" / "onnxruntime.json"
BIG_BATCH = 64


def session(model: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The default graph optimisations are what a user of onnxruntime gets.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def time_calls(sess: ort.InferenceSession, feeds: dict, min_time: float, min_iters: int) -> dict:
    """Per-call latencies in microseconds after a warm-up; p50, p90 and the count."""
    warm_deadline = time.perf_counter() + min(0.2, min_time / 4)
    for _ in range(3):
        sess.run(None, feeds)
    while time.perf_counter() < warm_deadline:
        sess.run(None, feeds)
    samples = []
    deadline = time.perf_counter() + min_time
    while len(samples) < min_iters or (time.perf_counter() < deadline and len(samples) < 100_000):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        samples.append(time.perf_counter_ns() - t0)
    us = np.array(samples, dtype=np.float64) / 1000.0
    return {
        "p50_us": round(float(np.percentile(us, 50)), 3),
        "p90_us": round(float(np.percentile(us, 90)), 3),
        "iters": len(samples),
    }


def load_inputs(case_dir: Path, metas: list[dict]) -> dict[str, np.ndarray]:
    feeds = {}
    for m in metas:
        arr = np.load(case_dir / m["file"], allow_pickle=False)
        if m["dtype"] == "string":
            # onnxruntime takes string tensors as numpy object arrays.
            arr = arr.astype(object)
        feeds[m["name"]] = arr
    return feeds


def is_tabular(entry: dict) -> bool:
    return entry["source"].startswith("scikit-learn") and all(
        len(i["shape"]) == 2 for i in entry["inputs"]
    )


def rows(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first n rows, repeating the fixture's rows when it has fewer."""
    out = {}
    for k, v in feeds.items():
        idx = np.arange(n) % v.shape[0]
        out[k] = np.ascontiguousarray(v[idx])
    return out


def describe_shapes(feeds: dict[str, np.ndarray]) -> str:
    return " ".join("x".join(str(d) for d in v.shape) or "scalar" for v in feeds.values())


def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for i in threadpool_info()
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("prefixes", nargs="*", help="only cases whose name starts with one of these")
    ap.add_argument(
        "--min-time", type=float, default=0.3, help="seconds of timed calls per measurement"
    )
    ap.add_argument(
        "--min-iters", type=int, default=30, help="timed calls per measurement, at least"
    )
    ap.add_argument("--out", type=Path, default=OUT, help="JSON output path")
    ap.add_argument(
        "--drover",
        action="store_true",
        help="then measure Drover in-process and over HTTP (cargo bench, release)",
    )
    args = ap.parse_args()

    index = json.loads(INDEX.read_text())
    if args.prefixes:
        index = [e for e in index if any(e["name"].startswith(p) for p in args.prefixes)]
    if not index:
        print("no case matches", file=sys.stderr)
        return 1

    results = []
    header = (
        f"{'case':45s} {'measure':10s} {'inputs':22s} {'p50 us':>10s} {'p90 us':>10s} {'iters':>7s}"
    )
    print(header)
    print("-" * len(header))
    for entry in index:
        case_dir = INDEX.parent / entry["name"]
        sess = session(INDEX.parent / entry["model"])
        measures: list[tuple[str, int | None, dict]] = []
        if is_tabular(entry):
            base = load_inputs(case_dir, entry["inputs"])
            measures.append(("batch1", 1, rows(base, 1)))
            measures.append((f"batch{BIG_BATCH}", BIG_BATCH, rows(base, BIG_BATCH)))
        else:
            for r, run in enumerate(entry["runs"]):
                measures.append((f"run{r}", None, load_inputs(case_dir, run["inputs"])))
        for label, batch, feeds in measures:
            t = time_calls(sess, feeds, args.min_time, args.min_iters)
            shapes = describe_shapes(feeds)
            print(
                f"{entry['name']:45s} {label:10s} {shapes[:22]:22s} "
                f"{t['p50_us']:>10.1f} {t['p90_us']:>10.1f} {t['iters']:>7d}",
                flush=True,
            )
            results.append(
                {
                    "case": entry["name"],
                    "measure": label,
                    "batch": batch,
                    "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
                    **t,
                }
            )

    report = {
        "tool": "scripts/bench_onnxruntime.py",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpus": os.cpu_count(),
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "min_time_s": args.min_time,
        "unset_env": sorted(_UNSET_BLAS_ENV),
        "numpy_blas": blas_info(),
        "unix_time": int(time.time()),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    if args.drover:
        import subprocess

        cmd = ["cargo", "bench", "-p", "drover-agent", "--bench", "models", "--", *args.prefixes]
        print("\n" + " ".join(cmd), flush=True)
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
