#!/usr/bin/env bash
# One command for a CUDA machine: bash tests/gpu_check.sh OUT
#
# Runs the CUDA paths at the default model size (efficientnet_b4, 224 px, 32 frames, clips of
# 8, batch 32, AMP; --pretrained none, as such a machine may be offline) on generated data:
#   the TM chain (stage 1 -> 2 -> 4), AV stage 1, CM stage 1 under torchrun on every GPU,
#   and python -m tests.benchmarks.bench_gpu.
# GPU_CHECK_FULL=1 adds the demo and the test suite. Each step has a time limit; GPU memory
# and utilisation are sampled every second. OUT gets summary.txt (one line per step, with
# its peak GPU memory and mean utilisation), gpu.csv, bench_gpu.json and logs.tar.gz.
# The YuNet model comes from DEEPFAKE_MODEL_DIR or the per-user cache, as in training.
set -uo pipefail
out="${1:?usage: bash tests/gpu_check.sh OUT}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="${GPU_CHECK_WORK:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$work/logs"
cd "$repo"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" || gpus=0
if [ "$gpus" -lt 1 ]; then echo "error: no NVIDIA GPU visible (nvidia-smi -L)" >&2; exit 2; fi

# epoch seconds, utilisation % and memory MiB of GPU 0, every second
( while true; do
    echo "$(date +%s),$(nvidia-smi --id=0 --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits | tr -d ' ')"
    sleep 1
  done ) > "$out/gpu.csv" &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT

: > "$out/summary.txt"
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$work/logs/$name.log" 2>&1
  rc=$?
  "$py" - "$out/gpu.csv" "$start" "$(date +%s)" "$name" "$rc" >> "$out/summary.txt" <<'PY'
import sys
path, t0, t1, name, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rows = []
for line in open(path):
    parts = line.strip().split(",")
    if len(parts) == 3 and parts[1].isdigit() and t0 <= int(parts[0]) <= t1:
        rows.append((int(parts[1]), int(parts[2])))
util = sum(r[0] for r in rows) / len(rows) if rows else float("nan")
peak = max((r[1] for r in rows), default=0)
state = "ok" if rc == 0 else ("timed out" if rc == 124 else f"exit {rc}")
print(f"{name:24s} {state:10s} {t1 - t0:5d} s  peak GPU memory {peak / 1024:6.2f} GiB  mean util {util:5.1f} %")
PY
  tail -n 1 "$out/summary.txt"
}

# One epoch of an untrained model on a few generated videos ranks at chance, and the
# collapse guard would rightly stop each chain at stage 1: here it is off, since this
# checks the CUDA paths, not learning (the demo and the test suite check learning).
cat > "$work/untrained.py" <<'PY'
import runpy, sys
import common.training.metrics as metrics
metrics.COLLAPSE_AUC = metrics.COLLAPSE_SPREAD = -1.0
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
untrained=("$py" "$work/untrained.py")  # a stage script with the collapse guard off

data="$work/data" ck="$work/checkpoints" cache="$work/cache"
# GPU_CHECK_STAGE_ARGS: extra stage flags, e.g. smaller sizes for a dry run of this script
# shellcheck disable=SC2206
common=(--checkpoint-dir "$ck" --cache-dir "$cache" --pretrained none --no-status --epochs 1 --workers 8
        ${GPU_CHECK_STAGE_ARGS:-})
step sample_data 300 "$py" -m common.sample_data "$data" --size tiny --force
step tm_stage1 600 "${untrained[@]}" train_tm_stage1_faceforensics.py --data "$data/faceforensics" "${common[@]}"
step tm_stage2 600 "${untrained[@]}" train_tm_stage2_celebdf.py --data "$data/celebdf" "${common[@]}"
step tm_stage4 600 "${untrained[@]}" train_tm_stage4_dfdc.py --data "$data/dfdc" --chunks 0,1 "${common[@]}"
step av_stage1 600 "${untrained[@]}" train_av_stage1_faceforensics.py --data "$data/faceforensics" "${common[@]}"
step cm_stage1_torchrun 600 "$py" -m torch.distributed.run --standalone --nproc_per_node="$gpus" \
  "$work/untrained.py" train_cm_stage1_faceforensics.py --data "$data/faceforensics" "${common[@]}"
step bench_gpu 900 "$py" -m tests.benchmarks.bench_gpu --out "$out/bench_gpu.json" --cache-dir "$work/bench_cache"
if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
  step demo 1800 "$py" -m common.demo "$work/demo"
  step test_suite 1800 "$py" -m pytest -q tests
fi
for f in "$ck"/*.metrics.jsonl; do
  [ -f "$f" ] && grep -h '"final"' "$f" | "$py" -c "
import json, sys
for line in sys.stdin:
    f = json.loads(line)['final']
    print(f\"{'$(basename "$f" .metrics.jsonl)':32s} val video AUC {f['val']['video']['auc']:.3f}, temperature {f['temperature']:.2f}\")
" >> "$out/summary.txt"
done
# Each stage's training rate as its progress bar last showed it (samples = frames, or clips
# for TM and AV): the per-GPU rate bench_loader sizes the loader against. Tiny data: an epoch
# is a few steps, so warm-up is in it.
for name in tm_stage1 tm_stage2 tm_stage4 av_stage1 cm_stage1_torchrun; do
  rate=$(grep -ao 'samples_s=[0-9.]*' "$work/logs/$name.log" 2>/dev/null | tail -n 1 | cut -d= -f2)
  [ -n "$rate" ] && echo "$name: training samples/s as last shown $rate" >> "$out/summary.txt"
done
tar czf "$out/logs.tar.gz" -C "$work" logs
echo "summary: $out/summary.txt"
