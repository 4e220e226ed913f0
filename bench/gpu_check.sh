#!/usr/bin/env bash
# All GPU checks in one run, for the device machine (one H100, no network). Prepare here, first:
#   bash ../shared/tools/device-wheels.sh          (the pinned stack's wheels into .whl/)
#   mkdir -p bench/results && cp ../shared/data/dialogsum/dialogsum.dev.jsonl bench/results/  (optional:
#                                                   real prompts; synthetic dialogues otherwise)
# then run `bash bench/gpu_check.sh` with carry [".whl", "bench/results"] and timeout_s 600.
# Prints the benchmark at the lab's batch (16), then at 64 with the shared-reference memory saving
# (bf16 is picked automatically on GPUs that support it). Expected wall time on an H100: about 7 min,
# most of it the lab's one-at-a-time loops. Results and the log land in $OUT (or bench/results).
set -uo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
size=${SIZE:-flan-t5-base} device=${DEVICE:-cuda}  # SIZE=tiny DEVICE=cpu: a dry run of this script on CPU
data=()
[ -f bench/results/dialogsum.dev.jsonl ] && data=(--data bench/results/dialogsum.dev.jsonl)
{
  [ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, transformers, trl, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
  python3 bench/bench_detox.py --size $size --device $device --batch 16 --steps 3 --new-tokens 64 "${data[@]}" \
    --out "$out/gpu-b16.json"
  python3 bench/bench_detox.py --size $size --device $device --batch 64 --steps 2 --new-tokens 64 "${data[@]}" \
    --phases ours_ppo ours_eval ours_ppo_refcopy --out "$out/gpu-b64.json"
} 2>&1 | grep -v "^$" | tee "$out/gpu_check.log"
