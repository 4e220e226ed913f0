"""End to end: `dvc repro` of the real stages on tiny models (T5) in a throw-away git + DVC repository, and
the team workflow on it (remote, clones, experiments). Every test here copies the one shared `ran` run, so
they stay in one file: pytest-xdist (--dist loadfile) then builds it once."""
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (ENV, ROOT, STAGES, changed_stages, check_model_card_snippet, check_modes, copy_repo, dvc, finite,
                      ran_stages, run_script, set_params, sh)

EVAL_KEYS = ["toxicity_mean", "toxicity_std", "expected_max_toxicity", "toxicity_probability", "reward_mean",
             "num_samples", "rouge1", "rouge2", "rougeL", "length_mean", "kl_mean", "perplexity_mean", "distinct_1",
             "distinct_2", "distinct_3"]


def test_every_output_exists_with_finite_numbers(ran):
    for path in ("baseline", "evaluation/ppo", "evaluation/grpo"):
        metrics = json.loads((ran / f"metrics/{path}.json").read_text())
        assert set(EVAL_KEYS) <= set(metrics)
        assert metrics["num_prompts"] == 8 and metrics["samples_per_prompt"] == 2 and metrics["num_samples"] == 16
        assert metrics["toxicity_mean"] <= metrics["expected_max_toxicity"] <= 1
        assert all(finite(metrics[k]) for k in EVAL_KEYS)
        assert 0 <= metrics["toxicity_mean"] <= 1
    summary = json.loads((ran / "metrics/compare/ppo.json").read_text())
    b, a = summary["before"]["toxicity_mean"], summary["after"]["toxicity_mean"]
    assert summary["toxicity"]["improvement_pct"] == pytest.approx((b - a) / b * 100)
    # one schema for every method: the same keys in each comparison file (best-of-N's KL is n/a: a bound instead)
    files = {m: json.loads((ran / f"metrics/compare/{m}.json").read_text()) for m in ("ppo", "dpo", "grpo", "best_of_n")}
    assert all(f["enabled"] and f["method"] == m for m, f in files.items())
    assert [(f["label"], f["algorithm"], f["trains_weights"]) for f in files.values()] == [
        ("PPO", "ppo", True), ("DPO", "dpo", True), ("GRPO", "grpo", True), ("best-of-N", "best_of_n", False)]
    assert sorted(p.name for p in (ran / "metrics/compare").iterdir()) == sorted(f"{m}.json" for m in files)
    assert len({frozenset(f) for f in files.values()}) == 1, {m: sorted(f) for m, f in files.items()}
    assert len({json.dumps(f["before"], sort_keys=True) for f in files.values()}) == 1  # the same start, paired
    assert set(summary["cost"]) == {"evaluation_generation", "training_responses", "optimizer_steps", "wall_s",
                                    "peak_memory_mb"}
    for key in ("toxicity", "expected_max_toxicity", "toxicity_probability", "reward", "rougeL", "length",
                "perplexity"):
        s = summary[key]
        assert s["diff_ci_low"] <= s["diff"] + 1e-9 and s["diff"] <= s["diff_ci_high"] + 1e-9
    assert set(summary["guards"]) == {"rougeL_drop_exceeded", "kl_exceeded", "length_below_min",
                                      "perplexity_rise_exceeded", "distinct2_below_min", "judge_disagrees"}
    # the independent judge (tiny/judge, labels neutral/toxic) scored the same samples, before and after
    judge = summary["judges"]["judge"]
    assert set(judge) == {"toxicity", "expected_max_toxicity", "toxicity_probability"}
    for s in judge.values():
        assert s["better"] == "lower" and s["diff_ci_low"] <= s["diff"] + 1e-9 <= s["diff_ci_high"] + 2e-9
    assert judge["toxicity"]["before"] == pytest.approx(summary["before"]["judges"]["judge"]["toxicity_mean"])
    assert summary["reward"]["better"] == "higher" and "improvement_pct" not in summary["reward"]
    # best-of-n: the same prompts, the kept response of n = 2 candidates, compared with the start
    bon = files["best_of_n"]
    assert bon["cost"] == {"evaluation_generation": 2, "training_responses": 0, "optimizer_steps": 0, "wall_s": 0.0,
                           "peak_memory_mb": None}
    assert bon["kl_bound"] == pytest.approx(0.6931 - 0.5, abs=1e-4) and bon["kl_mean"] is None
    assert bon["after"]["num_samples"] == 16 and "kl_mean" not in bon["after"]
    assert bon["guards"]["kl_exceeded"] == "n/a" and summary["kl_bound"] is None
    assert bon["toxicity"]["before"] == pytest.approx(summary["toxicity"]["before"])
    assert set(bon["judges"]["judge"]) == set(judge)
    with (ran / "data/samples/best_of_n.csv").open(newline="") as fh:
        kept = list(csv.DictReader(fh))
    assert len(kept) == 16 and all(r["kl"] == "" and finite(float(r["judge_judge"])) for r in kept)
    # the reward-KL frontier: KL to the start in nats per response, alike for every method (best-of-N over the start:
    # its kept responses' log-ratio is 0, its estimate within the analytic bound), a point each in the report's figure
    assert all(float(r["kl_response"]) == 0.0 for r in kept)
    per_prompt = {r["index"]: float(r["kl_bon"]) for r in kept}  # one value a prompt, from its 2 x 2 candidates
    assert len(per_prompt) == 8 and all(0 <= v <= bon["kl_bound"] + 1e-12 for v in per_prompt.values())
    kl = {m: f["kl_to_start"] for m, f in files.items()}
    assert kl["best_of_n"] == {"nats": pytest.approx(np.mean(list(per_prompt.values()))),
                               "bound": pytest.approx(bon["kl_bound"]), "how": kl["best_of_n"]["how"]}
    assert all(kl[m]["bound"] is None and finite(kl[m]["nats"]) for m in ("ppo", "dpo", "grpo"))
    for m in ("ppo", "dpo", "grpo"):  # each trained method's file: its KL and its paired difference to best-of-N
        vs = files[m]["versus_best_of_n"]
        assert files[m]["kl"]["before"] == 0.0 and finite(files[m]["kl"]["after"]) and set(vs["judges"]) == {"judge"}
        assert vs["toxicity"]["diff"] == pytest.approx(files[m]["toxicity"]["after"] - bon["toxicity"]["after"])
    with (ran / "reports/plots/frontier.csv").open(newline="") as fh:
        points = {r["method"]: (float(r["kl"]), float(r["toxicity"])) for r in csv.DictReader(fh)}
    assert points["start"] == (0.0, pytest.approx(summary["toxicity"]["before"]))
    assert points["GRPO"] == (pytest.approx(max(kl["grpo"]["nats"], 0.0)),
                              pytest.approx(files["grpo"]["toxicity"]["after"]))
    assert (ran / "reports/frontier.png").stat().st_size > 1000
    assert "## Toxicity against KL to the start" in (ran / "reports/report.md").read_text()
    for n in (1, 2, 3):  # diversity among each prompt's k samples, with a paired CI (and over all responses, without)
        s = summary[f"distinct_{n}_per_prompt"]
        assert s["better"] == "higher" and s["diff_ci_low"] <= s["diff"] + 1e-9 <= s["diff_ci_high"] + 2e-9
        assert s["before"] == pytest.approx(summary["before"][f"distinct_{n}_per_prompt"]) and 0 <= s["after"] <= 1
    for side in ("before", "after"):  # fluency and diversity, before and after
        assert all(finite(summary[side][k]) for k in ("perplexity_mean", "distinct_1", "distinct_2", "distinct_3"))
        assert summary[side]["perplexity_mean"] >= 1 and 0 <= summary[side]["distinct_2"] <= 1
    for name, fired in summary["guards"].items():  # each guard fired or not; the judge's n/a only with its reason (a
        # judge too weak on 8 prompts to see the reward's fall; which one a run gets changes with its float arithmetic)
        assert isinstance(fired, bool) or (name == "judge_disagrees" and fired == "n/a" and summary["judge_power"]
                                         and all(power["reason"] for power in summary["judge_power"].values())), (
            name, fired, summary["judge_power"])
    assert summary["training"]["steps_done"] == 4
    sft = json.loads((ran / "metrics/sft.json").read_text())
    assert sft["enabled"] and set(sft["rouge_before"]) == {"rouge1", "rouge2", "rougeL"}
    report = (ran / "reports/report.md").read_text()
    assert "| Toxicity (P(hate)) | lower |" in report and "reward_diff" in report
    assert "| Perplexity under the starting policy |" in report
    # its first line is the answer (8 paired prompts, below report.min_pairs: no method can be judged), then that
    # this is a smoke-sized run, one line per method, what ran, the guards; then start | PPO | DPO | GRPO | best-of-N
    assert report.splitlines()[0] == ("# Answer: no method could be judged: 8 paired prompts are too few to tell a "
                                      "real change from chance (report.min_pairs is 20).")
    assert report.splitlines()[2].startswith("**This is a smoke-sized run: its numbers show the pipeline works")
    heads = [line for line in report.splitlines() if line.startswith("## ")]
    assert heads[:4] == ["## Each method against the start", "## What ran", "## Guards against reward hacking",
                         "## Start and PPO, DPO, GRPO, best-of-N side by side"]
    assert ("| metric | better | start | PPO | PPO - start [95% CI] | DPO | DPO - start [95% CI] | GRPO | "
            "GRPO - start [95% CI] | best-of-N | best-of-N - start [95% CI] |") in report
    assert "| Judge judge: expected max toxicity | lower |" in report
    assert "| Evaluation generation (x one sample a response) | lower | 1 | 1 |  | 1 |  | 1 |  | 2 |  |" in report
    answer = report.split("## Each method against the start\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in answer.splitlines() if line.startswith("- ")]
    names = [line.replace("**", "")[4:].split(" (")[0] for line in lines]  # "- <mark> ": its outcome's colour
    assert names == ["PPO", "DPO", "GRPO", "best-of-N"]  # one line a method
    assert all(f"{name} (could not be judged)" in line or f"{name} (crossed a guard)" in line
               for name, line in zip(names, lines))  # too few pairs: never green
    assert all("judge judge" in line and "guards crossed:" in line for line in lines)
    costs = {m: f["cost"] for m, f in files.items()}  # each method's training cost, beside its figures
    assert costs["ppo"]["training_responses"] == 4 * 8 and costs["ppo"]["optimizer_steps"] == 4 * 1 * 2  # x batch;
    assert costs["grpo"]["training_responses"] == 3 * 4 * 2 and costs["grpo"]["optimizer_steps"] == 3 * 2  # x epochs
    assert costs["dpo"]["training_responses"] == 16 * 2 and costs["dpo"]["optimizer_steps"] == 2  # x minibatches
    assert all(costs[m]["wall_s"] > 0 and costs[m]["peak_memory_mb"] > 100 for m in ("ppo", "dpo", "grpo"))
    assert "| Training: responses generated | lower | 0 | 32 |  | 32 |  | 24 |  | 0 |" in report
    for png in ("max_toxicity_per_prompt.png", "training_curves.png", "toxicity_hist.png"):
        assert f"]({png})" in report and (ran / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    with (ran / "reports/per_prompt_max_toxicity.csv").open(newline="") as fh:
        per = list(csv.DictReader(fh))
    assert len(per) == 8  # one row a prompt: its mean over prompts is the expected maximum toxicity
    for col, side in (("start", summary["before"]), *((m, f["after"]) for m, f in files.items())):
        assert sum(float(r[col]) for r in per) / 8 == pytest.approx(side["expected_max_toxicity"], abs=1e-6)
    with (ran / "reports/qualitative.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["index", "sample", "prompt", "response_before", "response_after", "reward_before", "reward_after",
                                 "reward_diff"]
    diffs = [float(r["reward_diff"]) for r in rows]
    assert len(rows) == 16 and diffs == sorted(diffs, reverse=True)
    assert sorted((int(r["index"]), int(r["sample"])) for r in rows) == sorted({(int(r["index"]), int(r["sample"]))
                                                                              for r in rows})  # no row twice
    assert "| index | sample | prompt | response_before |" in report  # a prompt's k samples: k distinct rows
    for key in ("toxicity", "expected_max_toxicity", "toxicity_probability"):  # the lab's formula on each
        s = summary[key]
        if s["before"] > 0:
            assert s["improvement_pct"] == pytest.approx((s["before"] - s["after"]) / s["before"] * 100)
            assert s["improvement_pct"] == pytest.approx(-s["change_pct"])
    params = __import__("yaml").safe_load((ran / "params.yaml").read_text())
    setup = summary["setup"]  # what ran: the data, the template, what the reward reads
    assert setup["data_source"] == params["data"]["source"] and setup["prompt_template"] == params["prompt"]["template"]
    assert setup["reward_include_prompt"] is params["reward"]["include_prompt"] and setup["chat_template"] is False
    assert f"- Data: {params['data']['source']}; prompt template " in report
    assert "PPO's KL is TRL's objective/kl" in report and "nats per response" in report
    assert diffs[0] == pytest.approx(float(rows[0]["reward_after"]) - float(rows[0]["reward_before"]))
    from detoxkit.render import HIST_BINS  # one bin count for the chart and the CSV

    with (ran / "reports/toxicity_hist.csv").open(newline="") as fh:
        hist = list(csv.DictReader(fh))
    assert len(hist) == HIST_BINS and all(sum(int(r[c]) for r in hist) == 16 for c in ("start", "ppo", "grpo"))
    kl = (ran / "metrics/train/ppo/plots/metrics/objective/kl.tsv").read_text().splitlines()
    assert kl[0] == "step\tkl" and len(kl) == 1 + 4
    for rel in ("ppo/returns/mean.tsv", "ppo/policy/advantages_mean.tsv", "env/reward_mean.tsv"):
        assert (ran / "metrics/train/ppo/plots/metrics" / rel).is_file()
    # each training stage started from the sft adapter, and saved it with its own adapter
    for method in ("ppo", "dpo", "grpo"):
        assert (ran / f"models/trained/{method}/start_adapter/adapter_config.json").is_file()
    assert (ran / "models/trained/ppo/value_head.safetensors").is_file() and not (ran / "models/trained/grpo/value_head.safetensors").exists()


def test_the_published_folder_has_a_hub_model_card_with_the_headline_metrics(ran):
    import yaml

    folder = ran / "models/detoxified"  # the publish stage: the PPO adapter (models/trained/ppo) and its model card
    ppo = {p.name for p in (ran / "models/trained/ppo").iterdir()}  # (PEFT's save_pretrained writes a stub README.md)
    assert {p.name for p in folder.iterdir()} == ppo | {"README.md"}
    weights = "adapter_model.safetensors"
    assert (folder / weights).read_bytes() == (ran / "models/trained/ppo" / weights).read_bytes()
    card = (folder / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    params = yaml.safe_load((ran / "params.yaml").read_text())
    assert "base_model" not in meta and meta["library_name"] == "peft"  # the Hub wants an id: this is a folder
    assert f"- Base model: a local folder, `{params['policy']['model']}`" in body
    assert meta["pipeline_tag"] == "text2text-generation"
    assert {"trl", "ppo", "lora", "detoxification"} <= set(meta["tags"])
    summary = json.loads((ran / "metrics/compare/ppo.json").read_text())
    tox, judge = summary["toxicity"], summary["judges"]["judge"]["toxicity"]
    assert (f"| Toxicity (reward classifier, P(hate)) | {tox['before']:.4f} | {tox['after']:.4f} | {tox['diff']:+.4f} "
            f"[{tox['diff_ci_low']:+.4f}, {tox['diff_ci_high']:+.4f}] |") in body
    assert f"| Judge judge: toxicity | {judge['before']:.4f} |" in body and "| Expected maximum toxicity" in body
    assert "## Training procedure" in body and "| lora_r | 4 |" in body and "| learning_rate | 0.001 |" in body
    assert "PPO ran 4 of 4 steps" in body and "start_adapter/" in body
    code = check_model_card_snippet(ran)  # transformers and PEFT alone: the same text and logits as load_detoxified
    assert "subfolder='start_adapter'" in code and "AutoModelForSeq2SeqLM" in code
    from conftest import stage  # a Hub base: its id in base_model, and its revision in the snippet

    hub = {"base_model": "google/flan-t5-base", "revision": "v1.0", "start_adapter": None}
    train = json.loads((ran / "metrics/train/ppo/train.json").read_text())
    hub_card = stage("publish").model_card(hub, {"task_type": "SEQ_2_SEQ_LM"}, summary, train, "knkarthick/dialogsum",
                                           folder)
    hub_meta = yaml.safe_load(hub_card.split("---\n")[1])
    assert hub_meta["base_model"] == "google/flan-t5-base" and hub_meta["datasets"] == ["knkarthick/dialogsum"]
    assert "base_model = 'google/flan-t5-base'\n" in hub_card and "subfolder=" not in hub_card
    assert "from_pretrained(base_model, revision='v1.0')" in hub_card


def test_outputs_are_readable_by_others_under_umask_0022(ran):
    check_modes(ran, 0o022)  # files 644, folders 755 (the causal run checks 0002: 664, 775)


# Runs a stage script with torch unimportable: any import of torch (or a module of it) is an ImportError, and the
# attempt alone, caught or not, ends the process with status 97 once the script is done.
NO_TORCH = """
import os, runpy, sys
tried = []
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            tried.append(name)
            raise ImportError(f"{name} imported by a stage that is off")
sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    if tried or any(m.split(".")[0] == "torch" for m in sys.modules):
        print("torch imported by a stage that is off:", tried, file=sys.stderr)
        os._exit(97)
"""


def test_a_stage_that_is_off_writes_its_placeholder_without_loading_torch(ran, tmp_path):
    """bon@NAME with best_of_n.on_trained false, and a DPO entry's train@NAME and evaluate@NAME when it is off, write
    their placeholders without importing torch, which takes seconds to load (with one process: compute.processes > 1
    starts torchrun first). PPO's and GRPO's train@NAME still load it (their scripts import torch at the top)."""
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"methods.dpo.enabled": False})
    common = ["--sft", "models/sft", "--data", "data/prepared", "--models", "metrics/models"]
    runs = [("evaluate.py", "--policy", "best-of-n", "--trained", "models/trained/ppo", *common, "--metrics", "bon.json",
             "--samples", "bon.csv"),
            ("dpo.py", "--method", "dpo", "--data", "data/prepared", "--reference", "data/reference", "--sft",
             "models/sft", "--out", "dpo", "--live", "live", "--checkpoints", "ckpt"),
            ("evaluate.py", "--policy", "dpo", *common, "--metrics", "dpo.json", "--samples", "dpo.csv")]
    for script, *args in runs:
        proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "stages" / script), *args], cwd=repo,
                              env=ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert json.loads((repo / "bon.json").read_text()) == json.loads((repo / "dpo.json").read_text()) == {"enabled": False}
    assert (repo / "dpo/SKIPPED.md").is_file() and json.loads((repo / "live/train.json").read_text())["enabled"] is False
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "stages/evaluate.py"), "--policy", "start", *common,
                           "--metrics", "start.json", "--samples", "start.csv"], cwd=repo, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 97 and "torch imported by a stage that is off" in proc.stderr  # the blocker works


def test_outputs_are_git_ignored_and_status_is_clean(ran):
    assert changed_stages(ran) == []
    assert sh("git", "status", "--porcelain", cwd=ran).stdout == ""
    tracked = sh("git", "ls-files", cwd=ran).stdout.split()
    assert not [p for p in tracked if p.startswith(("data/", "models/", "metrics/", "reports/"))]


def test_learning_rate_change_reruns_only_ppo_and_after(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"methods.ppo.learning_rate": 0.002})
    # the entry's training, and the report and publish (they read every entry's name and switch); evaluate@ppo then
    # follows train@ppo's new outputs; nothing of DPO's or GRPO's, and not check
    assert changed_stages(repo) == ["publish", "report", "train@ppo"]
    out = dvc("repro", "--dry", cwd=repo).stdout
    assert ran_stages(out) == ["publish", "report", "train@ppo"]
    for stage in ("prepare", "sft", "baseline"):
        assert f"Stage '{stage}' didn't change" in out


def test_publish_method_grpo_reruns_only_publish_and_publishes_the_grpo_adapter(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"publish.method": "grpo"})
    assert changed_stages(repo) == ["publish"]  # nothing is trained or evaluated again
    assert ran_stages(dvc("repro", cwd=repo).stdout) == ["publish"]
    folder = repo / "models/detoxified"
    weights = "adapter_model.safetensors"
    assert (folder / weights).read_bytes() == (repo / "models/trained/grpo" / weights).read_bytes()
    assert not (folder / "value_head.safetensors").exists()
    card = (folder / "README.md").read_text()
    assert "detoxified with GRPO" in card and "GRPO ran 3 of 3 steps" in card and "Why this method: publish.method is grpo" in card
    assert "- grpo" in card and "- trl" not in card  # our engine, not TRL's
    grpo = json.loads((repo / "metrics/compare/grpo.json").read_text())["toxicity"]
    assert f"| Toxicity (reward classifier, P(hate)) | {grpo['before']:.4f} | {grpo['after']:.4f} |" in card
    check_model_card_snippet(repo)  # transformers and PEFT alone load it, as load_detoxified does


def test_grpo_curves_and_train_json(ran):
    train = json.loads((ran / "metrics/train/grpo/train.json").read_text())
    assert train["method"] == "grpo" and train["steps_done"] == 3 and train["optimizer_steps"] == 6
    root = ran / "metrics/train/grpo/plots/metrics"
    for name in ("env/reward_mean", "grpo/kl", "grpo/clip_fraction", "grpo/advantage_std", "grpo/zero_std_share",
                 "grpo/loss"):
        rows = (root / f"{name}.tsv").read_text().splitlines()
        assert len(rows) == 1 + 3 and all(finite(float(r.split()[1])) for r in rows[1:]), name
    kl = [float(r.split()[1]) for r in (root / "grpo/kl.tsv").read_text().splitlines()[1:]]
    assert all(v >= 0 for v in kl)  # the k3 estimate is never negative
    share = [float(r.split()[1]) for r in (root / "grpo/zero_std_share.tsv").read_text().splitlines()[1:]]
    assert all(0 <= v <= 1 for v in share)


def check_dpo_run(repo, causal: bool, published=None):
    """DPO beside PPO, as the DAG ran it: pairs from train prompts only, chosen above rejected by the margin, an
    adapter load_detoxified loads (the layout of models/trained/ppo), its own summary with CIs and judges, the report's
    DPO column. Shared with the causal run (test_causal_pipeline.py)."""
    import datasets
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    ref, params = params["reference"], params["methods"]["dpo"]
    from detoxkit.preferences import make_pairs, read_reference

    records, counts = read_reference(repo / "data/reference")
    pairs, made = make_pairs(records, params["min_margin"])  # as the DPO stage made them
    prepared = datasets.load_from_disk(str(repo / "data/prepared"))
    train = {tuple(ids): q for ids, q in zip(prepared["train"]["input_ids"], prepared["train"]["query"])}
    test = {tuple(ids) for ids in prepared["test"]["input_ids"]}
    assert len(pairs) >= params["min_pairs"] and not train.keys() & test  # (the split itself is disjoint)
    for pair in pairs:
        assert train[tuple(pair["prompt_ids"])] == pair["query"] and tuple(pair["prompt_ids"]) not in test
        assert pair["reward_chosen"] - pair["reward_rejected"] == pytest.approx(pair["margin"])
        assert pair["margin"] > 0 and pair["margin"] >= params["min_margin"] and pair["chosen"] != pair["rejected"]
    assert counts["prompts"] == ref["num_prompts"] and counts["generated_samples"] == ref["num_prompts"] * ref["n"]
    assert made["pairs"] == len(pairs) and all(len(r["responses"]) == ref["n"] == len(r["rewards"]) for r in records)
    folder = repo / "models/trained/dpo"  # the layout of models/trained/ppo, less the value head DPO does not have
    assert {"adapter_model.safetensors", "adapter_config.json", "policy.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "value_head.safetensors").exists()
    assert (folder / "start_adapter").is_dir() == (repo / "models/trained/ppo/start_adapter").is_dir()
    train_json = json.loads((repo / "metrics/train/dpo/train.json").read_text())
    assert train_json["method"] == "dpo" and train_json["steps_done"] == params["max_steps"]
    assert train_json["prompts_exact"] == len(pairs)  # DPOTrainer saw each prompt exactly as prepare built it
    loss = (repo / "metrics/train/dpo/plots/metrics/dpo/loss.tsv").read_text().splitlines()
    margin = (repo / "metrics/train/dpo/plots/metrics/dpo/reward_margin.tsv").read_text().splitlines()
    assert loss[0] == "step\tloss" and len(loss) == 1 + params["max_steps"] and len(margin) == len(loss)
    from detoxkit.settings import ComputeSettings
    from detoxkit.models import load_detoxified

    model, _, _ = load_detoxified(folder, ComputeSettings(device="cpu", dtype="float32", compile_generation=False))
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)  # it trained
    dpo = json.loads((repo / "metrics/compare/dpo.json").read_text())
    summary = json.loads((repo / "metrics/compare/ppo.json").read_text())
    assert dpo["enabled"] and dpo["method"] == "dpo" and set(dpo) == set(summary)  # one schema
    assert dpo["toxicity"]["before"] == pytest.approx(summary["toxicity"]["before"])  # the same start, paired
    for key in ("toxicity", "expected_max_toxicity", "toxicity_probability", "perplexity"):
        s = dpo[key]
        assert s["diff_ci_low"] <= s["diff"] + 1e-9 <= s["diff_ci_high"] + 2e-9
    assert set(dpo["judges"]) == set(summary["judges"]) and set(dpo["guards"]) == set(summary["guards"])
    assert dpo["after"]["num_samples"] == summary["num_samples"] and "kl_mean" in dpo["after"]
    assert dpo["training"]["pairs"] == len(pairs) and dpo["cost"]["training_responses"] == counts["generated_samples"]
    report = (repo / "reports/report.md").read_text()
    assert "| metric | better | start | PPO | PPO - start [95% CI] | DPO | DPO - start [95% CI] |" in report
    setup_line = next(line for line in report.splitlines() if line.startswith("- DPO: 2 steps ("))
    assert f", beta {params['beta']}," in setup_line and "DPO vs start, toxicity:" in report  # every DPO setting
    assert report.startswith("# Answer: ")  # the first line is the answer, whatever it is
    assert "| Training: optimizer steps | lower | 0 |" in report and "| Guards crossed | none |" in report
    with (repo / "reports/per_prompt_max_toxicity.csv").open(newline="") as fh:
        per = list(csv.DictReader(fh))
    assert sum(float(r["dpo"]) for r in per) / len(per) == pytest.approx(dpo["after"]["expected_max_toxicity"],
                                                                         abs=1e-6)
    if published is not None:  # publish serves models/trained/dpo as it does models/trained/ppo: a card, and a snippet that loads it
        set_params(repo, {"publish.method": "dpo"})
        run_script(repo, "publish.py", "--compare", "metrics/compare", "--trained", "models/trained", "--train",
                   "metrics/train", "--out", published)
        sh("git", "checkout", "params.yaml", cwd=repo)
        card = (published / "README.md").read_text()
        assert "detoxified with DPO" in card and "DPO ran 2 optimizer steps on" in card and "- dpo" in card
        tox = dpo["toxicity"]
        assert f"| Toxicity (reward classifier, P(hate)) | {tox['before']:.4f} | {tox['after']:.4f} |" in card
        check_model_card_snippet(repo, published)


def test_dpo_beside_ppo_from_the_starting_policys_own_samples(ran, tmp_path):
    check_dpo_run(ran, causal=False, published=tmp_path / "detoxified-dpo")


def test_dpo_changes_rerun_only_the_dpo_stages_and_report_and_the_toggle_says_off(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"methods.dpo.beta": 0.2})
    assert changed_stages(repo) == ["publish", "report", "train@dpo"]  # nothing of PPO's, GRPO's, the reference's
    set_params(repo, {"methods.dpo.beta": 0.1, "methods.dpo.enabled": False})
    assert changed_stages(repo) == ["publish", "report", "train@dpo"]  # not check: it reads no methods entry
    out = dvc("repro", cwd=repo).stdout
    assert ran_stages(out) == ["bon@dpo", "evaluate@dpo", "publish", "report", "train@dpo"]
    assert json.loads((repo / "metrics/compare/dpo.json").read_text()) == {
        "method": "dpo", "label": "DPO", "algorithm": "dpo", "trains_weights": True, "enabled": False}
    assert json.loads((repo / "metrics/evaluation/dpo.json").read_text()) == {"enabled": False}
    assert (repo / "models/trained/dpo/SKIPPED.md").is_file()
    report = (repo / "reports/report.md").read_text()
    assert "- Off: DPO (their stages' enabled setting is false)." in report and "| DPO |" not in report
    assert json.loads((repo / "metrics/compare/ppo.json").read_text()) == json.loads((ran / "metrics/compare/ppo.json").read_text())
    plots = dvc("plots", "show", "--json", cwd=repo)
    assert "failed" not in plots.stderr.lower()  # the disabled stage's header-only curve is a valid plot
    set_params(repo, {"methods.dpo.enabled": True})  # back on: the cached outputs return, nothing is trained again
    out = dvc("repro", cwd=repo).stdout
    assert ran_stages(out) == [] and "Stage 'train@dpo' is cached - skipping run" in out, out  # DVC's run cache


def test_best_of_n_toggle_reruns_only_best_of_n_and_report(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"best_of_n.enabled": False})
    # report reads best_of_n.enabled (its methods); bon@NAME (best-of-N on a trained policy, off) reads the section
    assert changed_stages(repo) == ["best_of_n", "bon@dpo", "bon@grpo", "bon@ppo", "report"]
    dvc("repro", "best_of_n", cwd=repo)  # disabled: an empty samples file, nothing loaded
    assert json.loads((repo / "metrics/best_of_n.json").read_text()) == {"enabled": False}
    assert (repo / "data/samples/best_of_n.csv").read_text().startswith('"index","sample"')
    assert len((repo / "data/samples/best_of_n.csv").read_text().splitlines()) == 1
    assert changed_stages(repo) == ["bon@dpo", "bon@grpo", "bon@ppo", "report"]
    # publish reads best-of-N's comparison too (it says so when best-of-N wins); the same PPO adapter is published
    assert ran_stages(dvc("repro", cwd=repo).stdout) == ["bon@dpo", "bon@grpo", "bon@ppo", "publish", "report"]
    assert json.loads((repo / "metrics/compare/best_of_n.json").read_text()) == {
        "method": "best_of_n", "label": "best-of-N", "algorithm": "best_of_n", "trains_weights": False, "enabled": False}
    report = (repo / "reports/report.md").read_text()
    assert "- Off: best-of-N (their stages' enabled setting is false)." in report and "| best-of-N |" not in report
    with (repo / "reports/per_prompt_max_toxicity.csv").open(newline="") as fh:
        assert {r["best_of_n"] for r in csv.DictReader(fh)} == {""}


def test_sft_param_change_invalidates_sft_but_ppo_change_does_not_touch_sft(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"methods.ppo.epochs": 2})
    assert changed_stages(repo) == ["publish", "report", "train@ppo"]
    set_params(repo, {"methods.ppo.epochs": 1, "sft.learning_rate": 0.002})
    assert changed_stages(repo) == ["sft"]  # and, as sft retrains, everything after it (run for real above)
    out = dvc("repro", "--dry", cwd=repo).stdout  # a dry run lists the stages invalidated directly
    assert ran_stages(out) == ["sft"] and "Stage 'prepare' didn't change" in out


def test_html_report_is_self_contained_with_tables_and_images(ran):
    import base64
    import html
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.links, self.tables, self.headers, self.h2 = [], [], 0, [], []
            self._in = None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self._in = tag
            if tag == "img":
                self.imgs.append(attrs["src"])
            if tag in ("script", "link", "a") and (attrs.get("src") or attrs.get("href")):
                self.links.append(attrs)
            self.tables += tag == "table"

        def handle_data(self, data):
            if self._in == "th":
                self.headers.append(data)
            if self._in == "h2":
                self.h2.append(data)

    page = Collect()
    page.feed((ran / "reports/report.html").read_text())
    assert len(page.imgs) == 4 and not page.links  # nothing fetched from elsewhere (the four figures, inline)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the guards, side by side, and largest gains and losses (each a sentence instead when no sample's reward moved)
    assert page.tables == 2 + (ran / "reports/report.md").read_text().count("| index | sample | prompt |")
    assert page.tables >= 3
    assert {"start", "PPO", "GRPO", "best-of-N", "PPO - start [95% CI]", "reward_diff", "response_after"} <= set(page.headers)
    md = [line[3:] for line in (ran / "reports/report.md").read_text().splitlines() if line.startswith("## ")]
    assert page.h2 == md  # one list of sections renders both reports
    text = (ran / "reports/report.html").read_text()
    report = (ran / "reports/report.md").read_text()
    red = "\n- \U0001F534 **" in report  # a method's line that raised toxicity or crossed a guard: red and bold
    assert "**" not in text and ("<strong>" in text) == ("**" in report)  # Markdown's emphasis is HTML's
    assert ("<li class='flag'>" in text) == red and "<li class='ok'>" not in text  # too few pairs: never green
    assert f"<h1>{html.escape(report.splitlines()[0][2:])}</h1>" in text  # the answer heads both


def test_dvc_plots_render_training_curves_and_distributions(ran, tmp_path):
    plots = json.loads(dvc("plots", "show", "--json", cwd=ran).stdout)["data"]
    for name in ("Toxicity per method (samples per toxicity bin)", "Toxicity per sample", "Reward per training step",
                 "Maximum toxicity per prompt (over its k samples)", "GRPO KL to the start per step (per token)",
                 "PPO KL to the start per step (TRL's, summed over a response's tokens)", "DPO loss per step",
                 "metrics/sft_train/plots/metrics/train/loss.tsv",
                 "Toxicity against KL to the start (nats per response; one point a method)"):
        assert plots[name][0]["type"] == "vega", name
    # the report's long-form files: every method of the run in every file, in the report's order (its colour)
    every = ["start", "PPO", "DPO", "GRPO", "best-of-N"]
    for name in ("toxicity_hist", "toxicity_per_sample", "frontier", "curves/env_reward_mean", "curves/dpo_loss"):
        with (ran / f"reports/plots/{name}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted({(r["method"], int(r["order"])) for r in rows}, key=lambda m: m[1]) == list(
            zip(every, range(5))), name
    reward = [r for r in csv.DictReader((ran / "reports/plots/curves/env_reward_mean.csv").open(newline=""))]
    assert len([r for r in reward if r["method"] == "PPO"]) == 4 and [r["value"] for r in reward
                                                                      if r["method"] == "DPO"] == ["NaN"]
    dvc("plots", "show", "-o", tmp_path / "plots", cwd=ran)
    assert "vega" in (tmp_path / "plots/index.html").read_text()


def _edit_row(path: Path):
    """One row of a JSONL data file edited (its dialogue gets a word more): the same size class of change a user
    makes by hand."""
    lines = path.read_text().splitlines()
    row = json.loads(lines[0])
    row["dialogue"] += " Okay."
    path.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")


def _retrain_in_place(folder: Path):
    """New weights in a PEFT adapter folder, at the same path (what retraining it in place does)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "adapter_model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, folder / "adapter_model.safetensors")


def _new_reward_weights(folder: Path):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(0.5)
    model.save_pretrained(folder)  # same folder, same params.yaml: only the weights changed


TRAIN = ["train@dpo", "train@grpo", "train@ppo"]  # the train template: each reads the reward's and the generation's
SCORING = sorted(["baseline", "best_of_n", "reference", "evaluate@dpo", "evaluate@grpo", "evaluate@ppo", *TRAIN,
                  "bon@dpo", "bon@grpo", "bon@ppo"])
ADAPTER_USERS = SCORING  # every stage that loads the starting policy also scores with the reward model
# change -> the stages `dvc status` must call changed, exactly (docs/dvc.md lists the same table).
# Each file-based case first points the setting at a private copy of the input and accepts the outputs as they
# are (`dvc commit -f`), then changes the copy in place.
NOTHING_STALE = {
    "one row of the local data file edited": ("data.source", "dialogues.jsonl", _edit_row, ["prepare"]),
    "the starting adapter folder retrained in place": ("policy.adapter", "models/sft", _retrain_in_place,
                                                       sorted(["check", *ADAPTER_USERS])),  # check: a safe adapter
    "new weights in the local reward folder": ("reward.model", "reward", _new_reward_weights, sorted(["check", *SCORING])),
    "render.py edited": (None, "stages/detoxkit/render.py", None, ["publish", "report"]),  # publish: via compare
    "compute.threads: 1": ({"compute.threads": 1}, None, None, []),
    "generation.output_max_length: 300": ({"generation.output_max_length": 300}, None, None, ["check", *TRAIN]),
    "reward.model: another folder": ({"reward.model": "copy"}, "reward", None, sorted(["check", "report", *SCORING])),
}


@pytest.mark.parametrize("change", list(NOTHING_STALE))
def test_nothing_stale_a_change_reruns_exactly_the_stages_that_read_it(ran, tmp_path, tiny, change):
    """What `dvc status` reports after each change is exactly the set of stages that read what changed: the lineage
    manifests cover data, adapter and model contents; code deps are each stage's import closure; params are listed
    by sub-key; compute.threads is nowhere; reward.model runs the `check` stage (the scorer checks) first."""
    import shutil

    key, source, edit, want = NOTHING_STALE[change]
    repo = copy_repo(ran, tmp_path / "repo")
    if isinstance(key, dict):  # a setting
        if source:  # the same content at another path
            copy = shutil.copytree(tiny["dir"] / source, tmp_path / "copy")
            key = {k: str(copy) for k in key}
        set_params(repo, key)
    elif key is None:  # a code edit
        with (repo / source).open("a") as fh:
            fh.write("\n# an edit\n")
    else:  # an input's content, in place
        src = repo / source if (repo / source).exists() else tiny["dir"] / source  # models/sft: an adapter folder
        copy = Path((shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / src.name))
        set_params(repo, {key: str(copy)})
        dvc("repro", "lineage", cwd=repo)
        dvc("commit", "-f", cwd=repo)  # the same content at a new path: accept the outputs as they are
        assert changed_stages(repo) == []
        name = {"data.source": "data", "policy.adapter": "adapter", "reward.model": "reward"}[key]
        before = json.loads((repo / "metrics/models" / f"{name}.json").read_text())
        edit(copy)
        dvc("repro", "lineage", cwd=repo)  # what `dvc repro` runs first
        after = json.loads((repo / "metrics/models" / f"{name}.json").read_text())
        assert after["resolved"] != before["resolved"] and after["resolved"].startswith("sha256:")
    dvc("repro", "lineage", cwd=repo)
    assert changed_stages(repo) == want, change
    dry = dvc("repro", "--dry", cwd=repo).stdout
    assert ran_stages(dry) == want


def test_new_reward_weights_show_in_dvc_metrics_diff(ran, tmp_path, tiny):
    import shutil

    repo = copy_repo(ran, tmp_path / "repo")
    reward = shutil.copytree(tiny["dir"] / "reward", tmp_path / "reward")
    set_params(repo, {"reward.model": str(reward)})
    dvc("repro", "lineage", cwd=repo)
    dvc("commit", "-f", cwd=repo)
    sh("git", "commit", "-qam", "reward copy", cwd=repo)
    _new_reward_weights(reward)
    dvc("repro", "lineage", cwd=repo)
    after = json.loads((repo / "metrics/models/reward.json").read_text())
    diff = json.loads(dvc("metrics", "diff", "--targets", "metrics/models/reward.json", "--json",
                          cwd=repo).stdout)["metrics/models/reward.json"]
    assert diff["resolved"]["new"] == after["resolved"]  # the lineage shows in `dvc metrics diff`


# --- team workflow: share artifacts through a DVC remote, run and compare experiments ------------
def test_push_then_fresh_clone_pulls_everything_and_reproduces_nothing(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "alice")
    remote = tmp_path / "storage"
    dvc("remote", "modify", "local", "url", remote, cwd=repo)
    sh("git", "commit", "-qam", "team remote", cwd=repo)
    dvc("push", cwd=repo)
    assert any(remote.rglob("*"))

    clone = tmp_path / "bob"
    sh("git", "clone", "-q", repo, clone, cwd=tmp_path)
    assert not (clone / "models").exists()
    dvc("pull", cwd=clone)
    assert changed_stages(clone) == [], dvc("status", cwd=clone).stdout
    out = dvc("repro", cwd=clone).stdout
    assert ran_stages(out) == []
    assert json.loads((clone / "metrics/compare/ppo.json").read_text()) == \
        json.loads((repo / "metrics/compare/ppo.json").read_text())

    from detoxkit.settings import ComputeSettings
    from detoxkit.models import load_detoxified

    # DVC's model registry: register a version and a stage (GTO's git tags on the artifact dvc.yaml declares),
    # then the published folder alone, from the remote, into a folder that is no repository
    sh("gto", "register", "detoxified", "--version", "v1.0.0", cwd=repo)
    sh("gto", "assign", "detoxified", "--version", "v1.0.0", "--stage", "prod", cwd=repo)
    elsewhere = tmp_path / "consumer"
    elsewhere.mkdir()
    dvc("artifacts", "get", repo, "detoxified", "--stage", "prod", "-o", "detoxified", cwd=elsewhere)
    fetched = {p.relative_to(elsewhere / "detoxified"): p.read_bytes() for p in (elsewhere / "detoxified").rglob("*")
               if p.is_file()}
    assert fetched == {p.relative_to(repo / "models/detoxified"): p.read_bytes()
                       for p in (repo / "models/detoxified").rglob("*") if p.is_file()}

    cpu = ComputeSettings(device="cpu", dtype="float32", compile_generation=False)
    model, tok, _ = load_detoxified(elsewhere / "detoxified", cpu)
    out = model.generate(**tok(["Summarize the following conversation. A: hi"], return_tensors="pt"),
                         max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > 1


# --- a team remote over a real protocol: SFTP to a server the test starts -------------------------------------
@pytest.fixture
def sftp(tmp_path):
    """A real SSH/SFTP server (asyncssh, the library DVC's SSH plugin speaks with) on 127.0.0.1 with a password
    login, and a home folder whose ~/.ssh/known_hosts holds its host key (verified as on a team member's machine).
    Set `slow` to delay every write the server takes (seconds), so that a push can be killed halfway."""
    import asyncio
    import threading

    import asyncssh

    root, home = tmp_path / "server", tmp_path / "home"
    root.mkdir()
    (home / ".ssh").mkdir(parents=True)
    state = {"slow": 0.0, "user": "alice", "password": "correct horse battery"}
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Storage(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=str(root).encode())

        def write(self, file_obj, offset, data):
            time.sleep(state["slow"])
            return super().write(file_obj, offset, data)

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username):
            return True

        def password_auth_supported(self):
            return True

        def validate_password(self, username, password):
            return (username, password) == (state["user"], state["password"])

    async def listen():
        return await asyncssh.listen("127.0.0.1", 0, server_factory=Server, server_host_keys=[key],
                                     sftp_factory=Storage, allow_scp=False)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    acceptor = asyncio.run_coroutine_threadsafe(listen(), loop).result(30)
    port = acceptor.get_port()
    (home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n")
    state.update(root=root, port=port, url=f"ssh://127.0.0.1:{port}/storage", env={**ENV, "HOME": str(home)})
    yield state
    acceptor.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def team(*cmd, cwd, server, check=True):
    """A command as a team member runs it: their HOME (known_hosts), the test venv first on PATH."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=server["env"], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def use_remote(repo, server, password=None):
    """The team's remote in .dvc/config (committed), this member's credentials in .dvc/config.local (not)."""
    dvc("remote", "add", "-f", "-d", "team", server["url"], cwd=repo)
    dvc("remote", "modify", "--local", "team", "user", server["user"], cwd=repo)
    dvc("remote", "modify", "--local", "team", "password", password or server["password"], cwd=repo)


REMOTE = [sys.executable, ROOT / "tools/remote.py"]


def test_team_remote_over_sftp_push_pull_in_a_fresh_clone_and_artifacts_get(ran, tmp_path, sftp):
    alice = copy_repo(ran, tmp_path / "alice")
    use_remote(alice, sftp)
    sh("git", "commit", "-qam", "team remote over SSH", cwd=alice)
    assert "password" not in (alice / ".dvc/config").read_text() and sftp["url"] in (alice / ".dvc/config").read_text()
    assert ".dvc/config.local" not in sh("git", "ls-files", cwd=alice).stdout.split()  # credentials never in git
    assert "Cache and remote 'team' are in sync" not in team(sys.executable, "-m", "dvc", "status", "-c", cwd=alice,
                                                             server=sftp).stdout
    team(*REMOTE, "push", cwd=alice, server=sftp)
    assert "Cache and remote 'team' are in sync." in team(sys.executable, "-m", "dvc", "status", "-c", cwd=alice,
                                                          server=sftp).stdout

    bob = tmp_path / "bob"  # a fresh clone on another member's machine: git, then their own credentials
    sh("git", "clone", "-q", alice, bob, cwd=tmp_path)
    use_remote(bob, sftp)
    team(*REMOTE, "pull", cwd=bob, server=sftp)
    assert changed_stages(bob) == []
    assert (bob / "metrics/compare/ppo.json").read_text() == (alice / "metrics/compare/ppo.json").read_text()
    assert "Cache and remote 'team' are in sync." in team(sys.executable, "-m", "dvc", "status", "-c", cwd=bob,
                                                          server=sftp).stdout

    # the published model alone, through the remote: a bare clone has no DVC cache, so every byte comes over SFTP
    sh("gto", "register", "detoxified", "--version", "v1.0.0", cwd=alice)
    sh("gto", "assign", "detoxified", "--version", "v1.0.0", "--stage", "prod", cwd=alice)
    bare = tmp_path / "alice.git"
    sh("git", "clone", "-q", "--bare", alice, bare, cwd=tmp_path)
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    team(sys.executable, "-m", "dvc", "artifacts", "get", bare, "detoxified", "--stage", "prod", "-o", "detoxified",
         "--remote-config", f"user={sftp['user']}", f"password={sftp['password']}", cwd=consumer, server=sftp)
    fetched = {p.relative_to(consumer / "detoxified"): p.read_bytes() for p in (consumer / "detoxified").rglob("*")
               if p.is_file()}
    assert fetched and fetched == {p.relative_to(alice / "models/detoxified"): p.read_bytes()
                                   for p in (alice / "models/detoxified").rglob("*") if p.is_file()}


def _remote_objects(root):
    return [p for p in (root / "storage/files/md5").rglob("*") if p.is_file()] if (root / "storage").exists() else []


def test_a_push_killed_halfway_then_repeated_leaves_the_remote_complete(ran, tmp_path, sftp):
    import hashlib
    import os
    import signal

    alice = copy_repo(ran, tmp_path / "alice")
    use_remote(alice, sftp)
    objects = [p for p in (alice / ".dvc/cache/files/md5").rglob("*") if p.is_file()]
    sftp["slow"] = 0.05  # every write the server takes waits: the push is still running when it is killed
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "push", "-j", "2"], cwd=alice, env=sftp["env"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_remote_objects(sftp["root"])) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    halfway = len(_remote_objects(sftp["root"]))
    assert 3 <= halfway < len(objects), (halfway, len(objects))
    sftp["slow"] = 0.0
    team(sys.executable, "-m", "dvc", "push", cwd=alice, server=sftp)
    assert "Cache and remote 'team' are in sync." in team(sys.executable, "-m", "dvc", "status", "-c", cwd=alice,
                                                          server=sftp).stdout
    stored = _remote_objects(sftp["root"])
    partial = [p for p in stored if p.name.startswith(".") and p.name.endswith(".tmp")]  # the killed uploads'
    stored = [p for p in stored if p not in partial]
    assert {p.relative_to(sftp["root"] / "storage") for p in stored} == {p.relative_to(alice / ".dvc/cache")
                                                                       for p in objects}
    for p in stored:  # content-addressed: every object's bytes hash to its name, so none is half-written
        assert hashlib.md5(p.read_bytes()).hexdigest() == p.parent.name + p.name.removesuffix(".dir"), p
    assert len(partial) <= 2  # at most one a transfer job (-j 2): hidden temporaries, never read as objects


def test_a_wrong_credential_or_an_unreachable_server_is_one_line_naming_the_remote(tmp_path, sftp):
    repo = tmp_path / "repo"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    (repo / "data.txt").write_text("rows\n")
    dvc("add", "-q", "data.txt", cwd=repo)
    use_remote(repo, sftp, password="wrong")
    proc = team(*REMOTE, "push", cwd=repo, server=sftp, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: remote 'team' ({sftp['url']}) refused the login") and \
        "dvc remote modify --local team user USER, and password PASSWORD" in lines[0], lines
    assert _remote_objects(sftp["root"]) == []  # nothing was sent
    dvc("remote", "modify", "team", "url", "ssh://127.0.0.1:9/storage", cwd=repo)  # nothing listens on port 9
    proc = team(*REMOTE, "check", cwd=repo, server=sftp, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: remote 'team' (ssh://127.0.0.1:9/storage) cannot be reached"), proc.stderr


def exp_rows(repo):
    rows = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    out = {}
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                metrics = data.get("metrics", {}).get("metrics/headline/ppo.json", {}).get("data", {})
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                out[rev.get("name") or exp.get("name")] = (params, metrics)
    return out


def test_experiments_run_show_and_diff(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    out = dvc("exp", "run", "-n", "lr-high", "-S", "methods.ppo.learning_rate=0.003", "-S", "methods.ppo.init_kl_coef=0.05",
              cwd=repo).stdout
    assert ran_stages(out) == ["bon@ppo", "evaluate@ppo", "publish", "report", "train@ppo"]
    rows = exp_rows(repo)
    params, metrics = rows["lr-high"]
    ppo = params["methods"]["ppo"]
    assert ppo["learning_rate"] == 0.003 and ppo["init_kl_coef"] == 0.05
    assert isinstance(metrics["toxicity"], float)
    # the DVC page's one-liner, as written there: one small table a number, a column a method, a row an experiment
    page = (ROOT / "docs/dvc.md").read_text()
    show = next(line for line in page.splitlines() if line.startswith("for k in toxicity judge ppl kl; do"))
    tables = sh("bash", "-c", "export COLUMNS=120; " + show, cwd=repo).stdout
    assert max(len(line) for line in tables.splitlines()) <= 120, tables
    toxicity = tables.split("\n\n")[0].splitlines()
    assert toxicity[0].split()[:2] == ["toxicity", "rev"] and {"start", "ppo"} <= set(toxicity[0].split()), tables
    row = next(line.split() for line in toxicity if line.startswith("lr-high"))
    ppo = row[toxicity[0].split().index("ppo")]
    assert abs(float(ppo) - metrics["toxicity"]) <= 0.006 * abs(metrics["toxicity"]), tables  # 3 digits
    diff = json.loads(dvc("metrics", "diff", "--targets", "metrics/compare/ppo.json", "--json",
                          cwd=repo).stdout)  # HEAD vs the experiment's workspace: a comparison file by name
    assert "after.toxicity_mean" in diff["metrics/compare/ppo.json"]
    tox = diff["metrics/compare/ppo.json"]["after.toxicity_mean"]
    assert tox["old"] == json.loads((ran / "metrics/compare/ppo.json").read_text())["after"]["toxicity_mean"]
    assert tox["new"] == json.loads((repo / "metrics/compare/ppo.json").read_text())["after"]["toxicity_mean"]
    plots = json.loads(dvc("plots", "diff", "HEAD", "--json", cwd=repo).stdout)["data"]
    curves = plots["Reward per training step"][0]["content"]["data"]["values"]
    assert {v["rev"] for v in curves if v["method"] == "PPO"} == {"HEAD", "workspace"}  # both runs' curves, side by side


def test_queued_sweep_runs_two_experiments(ran, tmp_path):
    """The queue mechanics (temporary workspaces, a worker, results in `dvc exp show`); the swept setting
    reruns only the report, so the two experiments cost seconds (a detox sweep is the same mechanics)."""
    repo = copy_repo(ran, tmp_path / "repo")
    for name, confidence in (("q-a", "0.9"), ("q-b", "0.8")):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"report.confidence={confidence}", cwd=repo)
    dvc("queue", "start", "-j", "1", cwd=repo)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc("queue", "status", cwd=repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    dvc("queue", "stop", "--kill", cwd=repo, check=False)
    assert "Failed" not in status, status + dvc("queue", "logs", "q-a", cwd=repo, check=False).stdout
    rows = exp_rows(repo)
    assert rows["q-a"][0]["report"]["confidence"] == 0.9 and rows["q-b"][0]["report"]["confidence"] == 0.8
    assert all(isinstance(rows[n][1]["toxicity"], float) for n in ("q-a", "q-b"))
    for name, confidence in (("q-a", 0.9), ("q-b", 0.8)):  # each ran its own report
        dvc("exp", "apply", name, cwd=repo)
        assert json.loads((repo / "metrics/compare/ppo.json").read_text())["confidence"] == confidence


def _output_files(repo):
    """Every file of every stage output dvc.yaml declares, with its bytes."""
    found = {}
    from test_dvc_views import expanded  # the train@NAME and evaluate@NAME templates, one stage an entry

    for stage in expanded(yaml.safe_load((repo / "dvc.yaml").read_text())):
        for out in stage.get("outs", []):
            path = repo / (out if isinstance(out, str) else next(iter(out)))
            for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                found[str(f.relative_to(repo))] = f.read_bytes()
    return found


def _unmeasured(node):
    """A JSON value without what is measured rather than computed: wall times, memory, their totals."""
    import re

    if isinstance(node, dict):
        return {k: _unmeasured(v) for k, v in node.items() if not re.search(r"wall|seconds|_s$|time|memory|peak", k)}
    return [_unmeasured(v) for v in node] if isinstance(node, list) else node


# Files that show measured time or memory in their text (the report and the card print the cost table).
MEASURED_TEXT = ("reports/", "models/detoxified/README.md")


# One stage of every kind, in DAG order (`-s` runs them as listed): each script, and each code path of evaluate.py (the
# start, best-of-N, a trained policy); evaluate@dpo and @grpo take evaluate@ppo's path, and bon@NAME (off here)
# writes a constant placeholder.
EVERY_KIND = ["lineage", "prepare", "check", "sft", "baseline", "best_of_n", "reference", "train@ppo", "train@dpo", "train@grpo",
              "evaluate@ppo", "report", "publish"]


def test_every_stage_run_twice_on_identical_inputs_writes_the_same_bytes(ran, tmp_path):
    """`dvc repro -f` of a stage of every kind (again, nothing changed) rewrites every output byte for byte, but for
    measured wall times and memory: a JSON file that differs differs in those keys alone, and only the report and
    the card, which print them, differ in their text."""
    repo = copy_repo(ran, tmp_path / "repo")
    before = _output_files(repo)
    out = dvc("repro", "-f", "-s", *EVERY_KIND, cwd=repo).stdout
    assert ran_stages(out) == sorted(EVERY_KIND[1:]) and "Running stage 'lineage'" in out
    after = _output_files(repo)
    assert set(after) == set(before) and len(before) > 50
    differ = sorted(k for k in before if before[k] != after[k])
    assert any(k.startswith("models/trained/ppo/") for k in before) and not [k for k in differ if k.startswith("models/trained/ppo")]
    for name in differ:
        if name.endswith(".json"):
            assert _unmeasured(json.loads(before[name])) == _unmeasured(json.loads(after[name])), name
        else:
            assert name.startswith(MEASURED_TEXT), (name, differ)


def test_ppo_is_one_method_among_equals_its_toggle_says_off(ran, tmp_path):
    """methods.ppo.enabled false: PPO's stages write placeholders as DPO's and GRPO's do (every curve dvc.yaml plots,
    header only; a train.json of the one schema), the report says it is off, and `dvc plots show` still works."""
    from detoxkit.methods import BY_ALGORITHM

    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"methods.ppo.enabled": False, "publish.method": "best"})  # publish.method ppo would be refused
    assert changed_stages(repo) == ["publish", "report", "train@ppo"]
    assert ran_stages(dvc("repro", cwd=repo).stdout) == ["bon@ppo", "evaluate@ppo", "publish", "report", "train@ppo"]
    assert json.loads((repo / "metrics/compare/ppo.json").read_text()) == {
        "method": "ppo", "label": "PPO", "algorithm": "ppo", "trains_weights": True, "enabled": False}
    assert (repo / "models/trained/ppo/SKIPPED.md").is_file() and json.loads((repo / "metrics/evaluation/ppo.json").read_text()) == {
        "enabled": False}
    for curve in BY_ALGORITHM["ppo"].curves:
        tsv = repo / "metrics/train/ppo/plots/metrics" / f"{curve}.tsv"
        assert tsv.read_text() == f"step\t{curve.rsplit('/', 1)[1]}\n", curve
    train = json.loads((repo / "metrics/train/ppo/train.json").read_text())
    assert train["enabled"] is False and set(train) == set(json.loads((repo / "metrics/train/grpo/train.json").read_text()))
    report = (repo / "reports/report.md").read_text()
    assert "- Off: PPO (their stages' enabled setting is false)." in report and "| PPO |" not in report
    assert "failed" not in dvc("plots", "show", "--json", cwd=repo).stderr.lower()


def test_a_variant_is_one_params_entry_trained_evaluated_compared_and_reported(ran, tmp_path):
    """A second GRPO entry with another learning rate, added to params.yaml and nothing else: dvc.yaml's templates
    give it its stages, `dvc repro` trains and evaluates it and the report and publish read it (its comparison file,
    its headline, its column, `dvc metrics show`); its learning rate then reruns its stages, report and publish only."""
    repo = copy_repo(ran, tmp_path / "repo")
    dvc_yaml = (repo / "dvc.yaml").read_text()
    entry = yaml.safe_load((repo / "params.yaml").read_text())["methods"]["grpo"]
    set_params(repo, {"methods.grpo_fast": {**entry, "learning_rate": 0.003}})
    new = ["bon@grpo_fast", "evaluate@grpo_fast", "publish", "report", "train@grpo_fast"]  # and nothing else
    assert changed_stages(repo) == new
    out = dvc("repro", cwd=repo).stdout
    assert sorted({s for s in (*new, *STAGES) if f"Running stage '{s}'" in out}) == new, out
    assert (repo / "dvc.yaml").read_text() == dvc_yaml  # no edit but params.yaml
    train = json.loads((repo / "metrics/train/grpo_fast/train.json").read_text())
    assert train["method"] == "grpo_fast" and train["algorithm"] == "grpo" and train["settings"]["learning_rate"] == 0.003
    assert set(train) == set(json.loads((repo / "metrics/train/grpo/train.json").read_text()))  # one schema
    fast = json.loads((repo / "metrics/compare/grpo_fast.json").read_text())
    grpo = json.loads((repo / "metrics/compare/grpo.json").read_text())
    assert (fast["label"], fast["algorithm"], fast["enabled"]) == ("grpo_fast", "grpo", True) and set(fast) == set(grpo)
    assert fast["toxicity"]["before"] == grpo["toxicity"]["before"]  # the same start, paired
    assert grpo == json.loads((ran / "metrics/compare/grpo.json").read_text())  # the original is untouched
    report = (repo / "reports/report.md").read_text()
    assert "| GRPO | GRPO - start [95% CI] | grpo_fast | grpo_fast - start [95% CI] | best-of-N |" in report
    assert "- grpo_fast: 3 steps (" in report and "learning_rate 0.003" in report
    shown = dvc("metrics", "show", "--json", cwd=repo).stdout
    assert "metrics/headline/grpo_fast.json" in shown
    with (repo / "reports/plots/toxicity_per_sample.csv").open(newline="") as fh:
        assert "grpo_fast" in {r["method"] for r in csv.DictReader(fh)}  # `dvc plots show` draws it too
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "a GRPO variant", cwd=repo)
    set_params(repo, {"methods.grpo_fast.learning_rate": 0.001})
    assert changed_stages(repo) == ["publish", "report", "train@grpo_fast"]  # then evaluate@grpo_fast follows
    dry = dvc("repro", "--dry", cwd=repo).stdout
    assert [s for s in ("check", "train@grpo", "evaluate@grpo", "train@ppo", "reference", "baseline")
            if f"Running stage '{s}'" in dry] == []



def test_best_of_n_on_each_trained_policy_is_a_method_of_its_own(ran, tmp_path):
    """best_of_n.on_trained: bon@NAME samples best-of-n from each trained policy it lists (true: every one), and the
    report compares NAME+bon like any method: a sampling procedure (no weights of its own, n samples a request) whose
    training cost is the policy's. An entry it leaves out keeps its bon@NAME placeholder."""
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"best_of_n.on_trained": ["ppo"]})
    assert changed_stages(repo) == ["bon@dpo", "bon@grpo", "bon@ppo", "report"]  # not best-of-N on the start
    proc = dvc("repro", cwd=repo)
    out = proc.stdout
    assert ran_stages(out) == ["bon@dpo", "bon@grpo", "bon@ppo", "publish", "report"], out  # publish: new files
    assert "best_of_n.on_trained leaves out dpo: wrote an empty" in out + proc.stderr
    assert json.loads((repo / "metrics/evaluation/dpo+bon.json").read_text()) == {"enabled": False}
    assert sorted(p.name for p in (repo / "metrics/compare").glob("*+bon.json")) == ["ppo+bon.json"]
    combo = json.loads((repo / "metrics/compare/ppo+bon.json").read_text())
    ppo = json.loads((repo / "metrics/compare/ppo.json").read_text())
    assert (combo["label"], combo["trains_weights"], combo["enabled"]) == ("PPO + best-of-N", False, True)
    assert set(combo) == set(ppo) and combo["toxicity"]["before"] == ppo["toxicity"]["before"]  # one schema, paired
    assert combo["cost"]["evaluation_generation"] == 2 and combo["cost"]["training_responses"] == \
        ppo["cost"]["training_responses"]  # n samples a request, on top of PPO's training
    with (repo / "data/samples/ppo+bon.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 16
    report = (repo / "reports/report.md").read_text()
    assert "| PPO + best-of-N | PPO + best-of-N - start [95% CI] |" in report
    assert json.loads((repo / "metrics/compare/best_of_n.json").read_text())["enabled"]
