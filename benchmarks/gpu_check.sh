#!/usr/bin/env bash
# The CUDA checks in one call on a lent GPU machine (benchmarks/README.md, "On a GPU"):
# tests/test_cuda.py, then timed `cnnlab train --device cuda` runs of the lecture, fast and
# best recipes, CUDA-graph steps vs eager (bench_cuda_step.py) and GPU inference
# (bench_backends.py --device cuda). cnnlab never needs a GPU; this is run by hand.
#
#   CNNLAB_DATA=/path/to/data OUT=/tmp/gpu bash benchmarks/gpu_check.sh [SECONDS]
#
# Uses the machine's python3 (its torch with CUDA) with src/ on PYTHONPATH, so nothing is
# installed. Each step has its own time limit and the script moves on when one fails; steps
# that would start after SECONDS (default 520) are skipped. Results land in $OUT as they
# come: all.log, tests.log, train.jsonl (one line a run), cuda_step.jsonl, backends.jsonl.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
limit=${1:-520}
mkdir -p "$out" /tmp/gpu-runs
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export CNNLAB_CACHE=${CNNLAB_CACHE:-/tmp/cnnlab-cache} CNNLAB_DATA=${CNNLAB_DATA:-$PWD/.gpudata}
exec > >(tee -a "$out/all.log") 2>&1
start=$SECONDS
say() { echo "== $(date -u +%H:%M:%S) +$((SECONDS - start))s $*"; }
time_left() { [ $((SECONDS - start + ${1:-0})) -lt "$limit" ] || { say "skipped (time): $2"; return 1; }; }

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
echo "cpus $(nproc), $(grep -m1 'model name' /proc/cpuinfo)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"

say "tests/test_cuda.py"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
    > "$out/tests.log" 2>&1
echo "pytest rc $?"; tail -n 25 "$out/tests.log"

train() {  # train TAG LIMIT ARGS...: one timed run, one JSON line in train.jsonl
    local tag=$1 lim=$2; shift 2
    time_left "$lim" "train $tag" || return 0
    say "train $tag: cnnlab train --device cuda $*"
    local t0 rc
    t0=$(date +%s.%N)
    timeout "$lim" python3 -m cnnlab train --device cuda "$@" --out "/tmp/gpu-runs/$tag" \
        > "/tmp/gpu-runs/$tag.out" 2> "/tmp/gpu-runs/$tag.err"
    rc=$?
    tail -n 3 "/tmp/gpu-runs/$tag.err"
    python3 - "$tag" "$rc" "$t0" "$*" >> "$out/train.jsonl" <<'EOF'
import csv, json, sys, time
from pathlib import Path
tag, rc, t0, args = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
run = Path("/tmp/gpu-runs") / tag
rec = {"tag": tag, "rc": rc, "wall_s": round(time.time() - t0, 2), "args": args}
try:
    m = json.loads((run / "metrics.json").read_text())
    rows = list(csv.DictReader((run / "history.csv").open()))
    cfg = json.loads((run / "config.json").read_text())
    rec.update(train_s=m.get("train_seconds"), test_acc=m["test"]["accuracy"],
               epochs=len(rows), img_s_last=rows[-1].get("images_per_s"),
               runtime=cfg["runtime"])
except (OSError, KeyError, ValueError, IndexError) as e:
    rec["error"] = repr(e)
print(json.dumps(rec))
EOF
    tail -n 1 "$out/train.jsonl"
}

train mnist-lecture 120 --data mnist --preset lecture
train mnist-lecture-bf16 120 --data mnist --preset lecture --bf16
train neu-lecture 120 --data neu --preset lecture
train neu-lecture-bf16 120 --data neu --preset lecture --bf16

if time_left 90 "bench_cuda_step seed-mnist"; then
    say "bench_cuda_step seed-mnist"
    timeout 150 python3 benchmarks/bench_cuda_step.py --model seed-mnist --images 60000 \
        --out /tmp/gpu-runs/step-mnist.json && cat /tmp/gpu-runs/step-mnist.json >> "$out/cuda_step.jsonl"
fi

train mnist-fast 120 --data mnist --preset fast
train neu-best 150 --data neu --preset best

for spec in "mnist-lecture mnist" "neu-best neu"; do
    set -- $spec
    time_left 60 "bench_backends $1" || continue
    say "bench_backends $1 --device cuda"
    timeout 120 python3 benchmarks/bench_backends.py "/tmp/gpu-runs/$1" --data "$2" --device cuda \
        --out "/tmp/gpu-runs/backends-$1.json" && cat "/tmp/gpu-runs/backends-$1.json" >> "$out/backends.jsonl"
done

if time_left 40 "bench_cuda_step seed-neu"; then
    say "bench_cuda_step seed-neu"
    timeout 90 python3 benchmarks/bench_cuda_step.py --model seed-neu --images 1150 --rounds 5 \
        --check-steps 10 --out /tmp/gpu-runs/step-neu.json && cat /tmp/gpu-runs/step-neu.json >> "$out/cuda_step.jsonl"
fi

train mnist-best 120 --data mnist --preset best
say "done"
