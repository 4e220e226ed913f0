"""Stage `reference`: the starting policy's own samples on train prompts, drawn and scored once.

    python stages/reference.py --data data/prepared --sft models/sft --out data/reference

For `reference.num_prompts` train prompts (never the test prompts that baseline and evaluate use), `reference.n`
responses each from the starting policy (the evaluation's batched generation, compiled on CUDA), scored by the
reward model. `samples.jsonl` holds one prompt a line: its train row, the prompt (as the reward model reads it, and
as the policy's token ids), the responses, their rewards and toxicity; `summary.json` the counts and the wall time.
The training stages depend on `samples.jsonl` alone, so a rerun that draws the same samples reruns none of them.
Every DPO methods entry makes its pairs from them (detoxkit.preferences.make_pairs, with its own min_margin), and
counts them in its training cost. With `reference.num_prompts: 0` it writes a placeholder in well under a second.
"""
import argparse
import json
import logging
import time

from detoxkit.config import check_split_sizes, load_params
from detoxkit.io import atomic_dir, run_stage, write_json, write_text
from detoxkit.parallel import is_main, setup
from detoxkit.preferences import SAMPLES, SUMMARY

log = logging.getLogger("detox.reference")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--sft", required=True, help="the sft stage's output (used when policy.adapter is sft)")
    parser.add_argument("--out", required=True, help="folder for samples.jsonl and summary.json")
    args = parser.parse_args()

    params = load_params()
    setup()  # under torchrun: join the process group (each process takes whole batches of the prompts)
    ref = params.reference
    if ref.num_prompts == 0:
        if is_main():
            with atomic_dir(args.out) as tmp:
                write_json(tmp / SUMMARY, {"enabled": False})
                write_text(tmp / SAMPLES, "")  # the file every train@NAME depends on
            log.info("reference.num_prompts is 0: no reference samples (a placeholder %s)", args.out)
        return

    from detoxkit.data import load_prepared, take
    from detoxkit.evaluation import Sampler
    from detoxkit.generation import sampling_kwargs
    from detoxkit.models import load_policy, start_adapter_path
    from detoxkit.preferences import reference_samples
    from detoxkit.scoring import build_scorer

    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("reference.num_prompts",))
    rows = take(data["train"], ref.num_prompts, "reference.num_prompts")  # train prompts only
    scorer = build_scorer(params.reward, params.compute)
    model, tokenizer, device = load_policy(params.policy, params.compute, start_adapter_path(params.policy, args.sft))
    log.info("sampling %d responses for each of %d train prompts from the starting policy", ref.n, len(rows))
    start = time.perf_counter()
    sampler = Sampler(model, tokenizer, device, params.seed, params.generation.batch_size,
                      params.compute.compile_generation, sampling_kwargs(params.generation))
    records = reference_samples(sampler, scorer, rows, ref)
    wall = time.perf_counter() - start
    if not is_main():  # every process holds all samples (gathered); one writes
        return
    with atomic_dir(args.out) as tmp:
        write_text(tmp / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_json(tmp / SUMMARY, {"enabled": True, "prompts": len(records), "n": ref.n,
                                   "generated_samples": len(records) * ref.n, "wall_s": wall})
    log.info("wrote %d x %d reference samples to %s in %.1f s", len(records), ref.n, args.out, wall)


if __name__ == "__main__":
    run_stage(main, parallel=True)
