#!/usr/bin/env bash
# Peak memory of a controller while several clients push large models at
# once (issue 13): starts `drover serve` on free loopback ports in a scratch
# data dir, runs CLIENTS uploads in parallel with curl, and reports the
# controller's VmHWM (peak RSS, from /proc/PID/status) and each upload's
# HTTP status.
#
#   scripts/upload_rss.sh [--bin target/release/drover] [--mode stream|json]
#                         [--model-mib 500] [--clients 4] [--kind padded|weights]
#                         [--budget-mib N]
#
# --mode stream: the model as the raw body (application/octet-stream), the
#   streamed upload `drover model push` uses.
# --mode json: the JSON push (onnx_base64), as controllers before streamed
#   uploads took every model (and as small models may still be pushed).
# --kind padded: sensor_clf_v1.onnx padded with an unknown protobuf field to
#   the size: a valid model whose validation is cheap, so the number is the
#   upload path's. --kind weights: a model with one float initializer of the
#   size (needs Python `onnx` and `numpy`): validation parses real weights.
# --budget-mib: the controller's --upload-budget-mib (only for binaries that
#   have the flag; default: the binary's default, 1 GiB).
#
# Needs curl and python3. Leaves nothing behind (scratch dir removed).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/drover
mode=stream
model_mib=500
clients=4
kind=padded
budget=
while [ $# -gt 0 ]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --model-mib) model_mib=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --kind) kind=$2; shift 2 ;;
        --budget-mib) budget=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The model (and for --mode json its JSON body), written once.
python3 - "$root" "$work" "$kind" "$model_mib" "$mode" <<'EOF'
import base64, json, sys
root, work, kind, mib, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
total = mib * 1024 * 1024
if kind == "padded":
    base = open(f"{root}/fixtures/models/sensor_clf_v1.onnx", "rb").read()
    def varint(v):
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            if v == 0:
                out.append(b)
                return bytes(out)
            out.append(b | 0x80)
    tag = varint((1000 << 3) | 2)
    for n in range(1, 6):
        pad = total - len(base) - len(tag) - n
        if len(varint(pad)) == n:
            break
    with open(f"{work}/model.onnx", "wb") as f:
        f.write(base + tag + varint(pad))
        chunk = b"\0" * (1 << 20)
        while pad > 0:
            f.write(chunk[: min(pad, len(chunk))])
            pad -= min(pad, len(chunk))
else:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(total // 4, dtype=np.float32), "w")
    g = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["w"], ["m"], keepdims=0),
            helper.make_node("ReduceSum", ["x"], ["s"], axes=[1], keepdims=1),
            helper.make_node("Add", ["s", "m"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    onnx.save(m, f"{work}/model.onnx")
if mode == "json":
    data = open(f"{work}/model.onnx", "rb").read()
    with open(f"{work}/body.json", "w") as f:
        f.write('{"name": "NAME", "onnx_base64": "')
        f.write(base64.b64encode(data).decode())
        f.write('"}')
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
mqtt_port=$(free_port)
extra=()
if [ -n "$budget" ]; then extra+=(--upload-budget-mib "$budget"); fi
"$bin" serve --data-dir "$work/data" --http "127.0.0.1:$http_port" \
    --mqtt-listen "127.0.0.1:$mqtt_port" "${extra[@]}" >"$work/serve.log" 2>&1 &
pid=$!
url=http://127.0.0.1:$http_port
for _ in $(seq 1 300); do
    if curl -sf "$url/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -sf "$url/healthz" >/dev/null || { cat "$work/serve.log" >&2; exit 1; }
token=$(cat "$work/data/admin.token")
hwm() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status"; }
idle=$(hwm)

size=$(stat -c %s "$work/model.onnx")
if [ "$mode" = json ]; then
    for i in $(seq 1 "$clients"); do sed "s/NAME/big$i/" "$work/body.json" >"$work/body$i.json"; done
    rm "$work/body.json"
fi
SECONDS=0
uploads=()
for i in $(seq 1 "$clients"); do
    if [ "$mode" = stream ]; then
        curl -s -o "$work/out$i" -w '%{http_code}\n' -X POST -T "$work/model.onnx" \
            -H "Authorization: Bearer $token" -H 'Content-Type: application/octet-stream' \
            "$url/v1/models?name=big$i" >"$work/code$i" &
    else
        curl -s -o "$work/out$i" -w '%{http_code}\n' -X POST -T "$work/body$i.json" \
            -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
            "$url/v1/models" >"$work/code$i" &
    fi
    uploads+=($!)
done
wait "${uploads[@]}" || true
codes=$(cat "$work"/code* | sort | uniq -c | awk '{printf "%s x %s, ", $1, $2}')
echo "mode=$mode kind=$kind model=$((size / 1048576)) MiB clients=$clients budget=${budget:-default}:" \
    "controller VmHWM idle $idle MiB, peak $(hwm) MiB; HTTP ${codes%, }; ${SECONDS}s"
