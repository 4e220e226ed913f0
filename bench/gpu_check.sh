#!/usr/bin/env bash
# All GPU checks in one run, for the device machine (one H100/H200, no network). Prepare here, first:
#   bash ../shared/tools/device-wheels.sh          (the pinned stack's wheels into .whl/)
#   mkdir -p bench/results && cp ../shared/data/dialogsum/dialogsum.dev.jsonl bench/results/  (optional:
#                                                   real prompts; synthetic dialogues otherwise)
#   SIZE=tiny DEVICE=cpu bash bench/gpu_check.sh    (a dry run on CPU; the compiled phases are CUDA only)
# then run `bash bench/gpu_check.sh` with carry [".whl", "bench/results"] and timeout_s 600.
# 1. batch 16 (the lab's), 64-token responses: lab loop against ours, eager and compiled
#    (compute.compile_generation), with per-part timings (generate / score / step);
# 2. the detox stage's compiled rollouts with a new response length every step (bench/gpu_rollouts.py);
# 3. batch 64: ours, and the peak memory of a separate reference copy.
# bf16 is picked automatically on GPUs that support it; each phase reports its dtype and whether every
# reward, KL and loss was finite. Expected wall time on an H200: about 8 min. Results and the log land
# in $OUT (or bench/results), written as each phase ends, so a run cut short still reports.
set -uo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
size=${SIZE:-flan-t5-base} device=${DEVICE:-cuda}
if [ -d .whl ] && [ "$device" = cuda ]; then  # the wheels are for the GPU machine's Python 3.12
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
data=()
[ -f bench/results/dialogsum.dev.jsonl ] && data=(--data bench/results/dialogsum.dev.jsonl)
compiled16=(ours_eval_compiled ours_ppo_compiled)
[ "$device" = cuda ] || compiled16=()
{
  date -u
  [ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, trl, peft, accelerate; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
  python3 bench/bench_detox.py --size $size --device $device --batch 16 --steps 2 --new-tokens 64 "${data[@]}" \
    --phase-timeout 150 --phases lab_ppo ours_ppo lab_eval ours_eval "${compiled16[@]}" --out "$out/gpu-b16.json"
  timeout 100 python3 bench/gpu_rollouts.py --device $device
  python3 bench/bench_detox.py --size $size --device $device --batch 64 --steps 2 --new-tokens 64 "${data[@]}" \
    --phase-timeout 150 --phases ours_ppo ours_eval ours_ppo_refcopy --out "$out/gpu-b64.json"
  date -u
} 2>&1 | grep --line-buffered -v "^$" | tee "$out/gpu_check.log"
