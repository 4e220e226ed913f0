"""Stage `dpo_pairs`: DPO's preference pairs, from the starting policy's own samples on train prompts.

    python stages/dpo_pairs.py --data data/prepared --sft models/sft --out data/dpo_pairs \
        --metrics metrics/dpo_pairs.json

For `dpo.num_prompts` train prompts (never the test prompts that baseline and evaluate use), `dpo.n`
responses each from the starting policy (the evaluation's batched generation, compiled on CUDA), scored
by the reward model: chosen = the highest reward, rejected = the lowest, kept when the gap is at least
`dpo.min_margin`. `pairs.jsonl` holds one pair a line: the train row, the prompt (as the reward model reads
it, and as the policy's token ids), both responses and both rewards. Too few pairs stop the stage, naming
the settings that make more. With `dpo.enabled: false` it writes a placeholder in well under a second.
"""
import argparse
import json
import logging
import time

from detoxkit.config import check_split_sizes, load_params
from detoxkit.io import atomic_dir, run_stage, write_json, write_placeholder, write_text
from detoxkit.parallel import is_main, setup

log = logging.getLogger("detox.dpo_pairs")
SKIPPED_NOTE = "The DPO stages are off (dpo.enabled is false): no pairs were sampled.\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--sft", required=True, help="the sft stage's output (used when policy.adapter is sft)")
    parser.add_argument("--out", required=True, help="folder for pairs.jsonl")
    parser.add_argument("--metrics", required=True, help="how many prompts, samples and pairs")
    args = parser.parse_args()

    params = load_params()
    setup()  # under torchrun: join the process group (each process takes whole batches of the prompts)
    dpo = params.dpo
    if not dpo.enabled:
        if not is_main():
            return
        write_placeholder(args.out, SKIPPED_NOTE)
        write_json(args.metrics, {"enabled": False})
        log.info("dpo.enabled is false: wrote a placeholder %s", args.out)
        return

    from detoxkit.data import load_prepared, take
    from detoxkit.evaluation import Sampler
    from detoxkit.preferences import check_pairs, preference_pairs
    from detoxkit.generation import sampling_kwargs
    from detoxkit.models import load_policy, start_adapter_path
    from detoxkit.scoring import build_scorer

    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("dpo.num_prompts",))
    rows = take(data["train"], dpo.num_prompts, "dpo.num_prompts")  # train prompts only
    scorer = build_scorer(params.reward, params.compute)
    model, tokenizer, device = load_policy(params.policy, params.compute, start_adapter_path(params.policy, args.sft))
    log.info("sampling %d responses for each of %d train prompts from the starting policy", dpo.n, len(rows))
    start = time.perf_counter()
    sampler = Sampler(model, tokenizer, device, params.seed, params.generation.batch_size,
                      params.compute.compile_generation, sampling_kwargs(params.generation))
    pairs, counts = preference_pairs(sampler, scorer, rows, dpo)
    wall = time.perf_counter() - start
    log.info("%d of %d prompts gave a pair (reward gap >= dpo.min_margin %g; mean gap %.3f over all prompts)",
             counts["pairs"], counts["prompts"], dpo.min_margin, counts["margin_mean_all"])
    check_pairs(pairs, dpo, f"{len(rows)} train prompts")
    if not is_main():  # every process holds all pairs (gathered); one writes
        return
    with atomic_dir(args.out) as tmp:
        write_text(tmp / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    write_json(args.metrics, {"enabled": True, **counts, "n": dpo.n, "min_margin": dpo.min_margin, "wall_s": wall})
    log.info("wrote %s/pairs.jsonl in %.1f s", args.out, wall)


if __name__ == "__main__":
    run_stage(main, parallel=True)
