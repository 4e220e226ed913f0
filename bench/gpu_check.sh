#!/usr/bin/env bash
# All GPU checks in one run, for the device machine (one H100, no network). Prepare wheels first, here:
#   bash ../shared/tools/device-wheels.sh      (the benchmark needs nothing beyond that pinned stack)
# then run this with `.whl` carried. Prints the benchmark at the lab's batch (16), and at 64 with the
# shared-reference memory saving (bf16 is picked automatically on GPUs that support it).
# Results land in $OUT (or bench/results).
set -uo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 bench/bench_detox.py --size flan-t5-base --device cuda --batch 16 --steps 5 --new-tokens 64 \
  --out "$out/gpu-b16.json" 2>&1 | grep -v "^$"
python3 bench/bench_detox.py --size flan-t5-base --device cuda --batch 64 --steps 3 --new-tokens 64 \
  --phases ours_ppo ours_eval ours_ppo_refcopy --out "$out/gpu-b64.json" 2>&1 | grep -v "^$"
