"""Stages `baseline`, `best_of_n` and `evaluate@NAME` (each methods entry): one evaluation, every policy.

    python stages/evaluate.py --policy start --sft models/sft --data data/prepared \
        --metrics metrics/baseline.json --samples data/samples/baseline.csv
    python stages/evaluate.py --policy models/trained/ppo --sft models/sft --data data/prepared \
        --metrics metrics/evaluation/ppo.json --samples data/samples/ppo.csv          # every entry alike
    python stages/evaluate.py --policy best-of-n --sft models/sft --data data/prepared \
        --metrics metrics/best_of_n.json --samples data/samples/best_of_n.csv
    python stages/evaluate.py --policy best-of-n --trained models/trained/ppo ... \
        --metrics metrics/evaluation/ppo+bon.json --samples data/samples/ppo+bon.csv     # best_of_n.on_trained

`start` is the starting policy (the base model plus its starting adapter); a folder is a trained method's policy
(a methods entry's: one layout for every algorithm); `best-of-n` keeps the highest-reward of best_of_n.n samples of
the starting policy, or with --trained of a trained method's policy (models/trained/NAME, when best_of_n.on_trained
is true or lists NAME). With best_of_n.enabled false, or on_trained leaving NAME out, it writes an empty samples file
and loads nothing; a placeholder folder, a method whose stages are off, does the same. Same test prompts, same seed,
same sampling settings for all, so the report can pair them. With compute.processes > 1 (or under torchrun) each
process takes whole batches of the samples; the results are the same as one process's. The baseline, the first stage
that generates, also prints the estimated time of the stages after it (detoxkit.eta), from its own measured rate.
"""
import argparse
import logging
import time
from pathlib import Path

from detoxkit.config import check_split_sizes, load_params
from detoxkit.io import is_placeholder, run_stage, write_csv, write_json
from detoxkit.parallel import is_main, setup
from detoxkit.summary import sample_columns, summarize

log = logging.getLogger("detox.evaluate")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True, help="`start`, `best-of-n` or a detoxified policy folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output (used when policy.adapter is sft)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--samples", required=True)
    parser.add_argument("--models", help="the lineage stage's manifests (a judge that is the reward is refused)")
    parser.add_argument("--trained", help="with --policy best-of-n: best-of-n on this trained policy, not the start")
    args = parser.parse_args()

    params = load_params()
    ev = params.evaluation
    bon, trained = params.best_of_n, args.trained
    name = trained and Path(trained).name  # models/trained/NAME: the methods entry best-of-n would sample from
    off = ("best_of_n.enabled is false" if args.policy == "best-of-n" and not bon.enabled else
           f"best_of_n.on_trained {f'leaves out {name}' if isinstance(bon.on_trained, list) else 'is false'}"
           if trained and not bon.on(name) else
           f"{args.policy} is a placeholder (its stage is off)" if is_placeholder(args.policy) else
           f"{trained} is a placeholder (its stage is off)" if trained and is_placeholder(trained)
           else None)
    if off:  # the stage stays in the DAG, cheap and empty (best-of-N off; an entry off: its folder is a placeholder)
        if not is_main():
            return
        write_csv(args.samples, [], sample_columns(ev.judges))
        write_json(args.metrics, {"enabled": False})
        log.info("%s: wrote an empty %s", off, args.samples)
        return

    from detoxkit.data import load_prepared, take  # the model side loads only for a stage that is on
    from detoxkit.eta import log_estimate
    from detoxkit.evaluation import Sampler, best_of_n, evaluate_policy
    from detoxkit.generation import sampling_kwargs
    from detoxkit.models import check_policy_config, load_detoxified, load_policy, start_adapter_path
    from detoxkit.scoring import build_judges, build_scorer, check_scorers

    setup()  # under torchrun: join the process group (each process takes whole batches of the prompts)
    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("evaluation.num_samples",))
    rows = take(data["test"], ev.num_samples, "evaluation.num_samples")
    adapter = start_adapter_path(params.policy, args.sft)
    check_scorers(params.reward, ev.judges, args.models)  # every scorer is checked before any weights load
    scorer = build_scorer(params.reward, params.compute)
    check_policy_config(params.policy)  # before the policy's weights load
    if args.policy in ("start", "best-of-n") and not trained:
        model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    else:  # a trained method's policy (best-of-n on it with --trained)
        model, tokenizer, device = load_detoxified(trained or args.policy, params.compute, params.policy.allow_pickle)
    judges = build_judges(ev.judges, params.compute, params.reward.batch_size)
    log.info("evaluating %s on %d test prompts, %d samples each; judges: %s", args.policy, len(rows),
             ev.samples_per_prompt, [j.name for j in judges] or "none")

    sampler, extra = Sampler(model, tokenizer, device, params.seed, ev.batch_size, params.compute.compile_generation,
                             sampling_kwargs(params.generation)), {}
    if args.policy == "best-of-n":
        n = params.best_of_n.n
        log.info("best-of-%d: %d candidates from %s", n, len(rows) * ev.samples_per_prompt * n,
                 trained or "the starting policy")
        records = best_of_n(sampler, scorer, rows, ev, n, judges)
        extra = {"enabled": True, "n": n, "generated_samples": len(records) * n}
    else:
        started = time.perf_counter()
        records = evaluate_policy(sampler, scorer, rows, ev, judges)
        if args.policy == "start" and is_main():
            log_estimate(params, len(data["train"]), len(data["test"]), time.perf_counter() - started,
                         len(records) * ev.max_new_tokens)
    if not is_main():  # every process holds all records (gathered); one writes
        return
    metrics = {**summarize(records, ev.toxic_threshold), **extra}
    write_csv(args.samples, records, sample_columns(judges))
    write_json(args.metrics, metrics)
    log.info("toxicity %.4f ± %.4f (expected max %.4f, probability %.3f), reward %.3f, ROUGE-L %s over %d "
             "samples", metrics["toxicity_mean"], metrics["toxicity_std"], metrics["expected_max_toxicity"],
             metrics["toxicity_probability"], metrics["reward_mean"],
             f"{metrics['rougeL']:.3f}" if "rougeL" in metrics else "n/a (no references)", metrics["num_samples"])


if __name__ == "__main__":
    run_stage(main, parallel=True)
