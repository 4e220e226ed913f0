"""End to end: `dvc repro` of the real stages on tiny models in a throw-away git + DVC repository."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ENV, STAGES, changed_stages, copy_repo, dvc, make_repo, ran_stages, set_params, sh

EVAL_KEYS = ["toxicity_mean", "toxicity_std", "reward_mean", "num_samples", "rouge1", "rouge2", "rougeL",
             "length_mean", "kl_mean"]


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_output_exists_with_finite_numbers(ran):
    for name in ("baseline", "detoxified"):
        metrics = json.loads((ran / f"metrics/{name}.json").read_text())
        assert set(EVAL_KEYS) <= set(metrics)
        assert metrics["num_samples"] == 8
        assert all(finite(metrics[k]) for k in EVAL_KEYS)
        assert 0 <= metrics["toxicity_mean"] <= 1
    summary = json.loads((ran / "metrics/summary.json").read_text())
    b, a = summary["before"]["toxicity_mean"], summary["after"]["toxicity_mean"]
    assert summary["toxicity_improvement_pct"] == pytest.approx((b - a) / b * 100)
    for key in ("toxicity", "reward", "rougeL", "length"):
        s = summary[key]
        assert s["diff_ci_low"] <= s["diff"] + 1e-9 and s["diff"] <= s["diff_ci_high"] + 1e-9
    assert set(summary["guards"]) == {"rougeL_drop_exceeded", "kl_exceeded", "length_below_min"}
    assert all(isinstance(v, bool) for v in summary["guards"].values())
    assert summary["detox"]["steps_done"] == 4
    sft = json.loads((ran / "metrics/sft.json").read_text())
    assert sft["enabled"] and set(sft["rouge_before"]) == {"rouge1", "rouge2", "rougeL"}
    report = (ran / "reports/report.md").read_text()
    assert "| Toxicity (P(hate)) |" in report and "reward_diff" in report
    with (ran / "reports/qualitative.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["prompt", "response_before", "response_after", "reward_before", "reward_after",
                                 "reward_diff"]
    diffs = [float(r["reward_diff"]) for r in rows]
    assert len(rows) == 8 and diffs == sorted(diffs, reverse=True)
    assert diffs[0] == pytest.approx(float(rows[0]["reward_after"]) - float(rows[0]["reward_before"]))
    kl = (ran / "metrics/detox/plots/metrics/objective/kl.tsv").read_text().splitlines()
    assert kl[0] == "step\tkl" and len(kl) == 1 + 4
    for rel in ("ppo/returns/mean.tsv", "ppo/policy/advantages_mean.tsv", "env/reward_mean.tsv"):
        assert (ran / "metrics/detox/plots/metrics" / rel).is_file()
    # the detox stage started from the sft adapter, and saved it with the PPO adapter
    assert (ran / "models/detoxified/start_adapter/adapter_config.json").is_file()
    assert (ran / "models/detoxified/value_head.safetensors").is_file()


def test_outputs_are_git_ignored_and_status_is_clean(ran):
    assert changed_stages(ran) == []
    assert sh("git", "status", "--porcelain", cwd=ran).stdout == ""
    tracked = sh("git", "ls-files", cwd=ran).stdout.split()
    assert not [p for p in tracked if p.startswith(("data/", "models/", "metrics/", "reports/"))]


def test_learning_rate_change_reruns_only_detox_and_after(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"ppo.learning_rate": 0.002})
    assert changed_stages(repo) == ["detox"]
    out = dvc("repro", cwd=repo).stdout
    assert ran_stages(out) == ["detox", "evaluate", "report"]
    assert "Stage 'prepare' didn't change" in out and "Stage 'baseline' didn't change" in out
    assert changed_stages(repo) == []


def test_sft_param_change_invalidates_sft_but_ppo_change_does_not_touch_sft(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    set_params(repo, {"ppo.epochs": 2})
    assert changed_stages(repo) == ["detox"]
    set_params(repo, {"ppo.epochs": 1, "sft.learning_rate": 0.002})
    assert changed_stages(repo) == ["sft"]  # and, as sft retrains, everything after it (run for real above)
    out = dvc("repro", "--dry", cwd=repo).stdout  # a dry run lists the stages invalidated directly
    assert ran_stages(out) == ["sft"] and "Stage 'prepare' didn't change" in out


def test_pipeline_without_sft(tiny, tmp_path):
    repo = make_repo(tmp_path / "repo", tiny["params"], {"policy.adapter": None})
    out = dvc("repro", cwd=repo)
    assert ran_stages(out.stdout) == sorted(STAGES)
    assert json.loads((repo / "metrics/sft.json").read_text()) == {"enabled": False}
    assert [p.name for p in (repo / "models/sft").iterdir()] == ["SKIPPED.md"]
    assert not (repo / "models/detoxified/start_adapter").exists()
    assert json.loads((repo / "metrics/summary.json").read_text())["num_samples"] == 8


def test_kill_9_during_detox_then_repro_resumes_and_matches_uninterrupted(tiny, tmp_path):
    over = {"policy.adapter": None, "ppo.max_steps": 12, "ppo.checkpoint_every": 2}
    ref = make_repo(tmp_path / "ref", tiny["params"], over)
    dvc("repro", "detox", cwd=ref)
    repo = make_repo(tmp_path / "repo", tiny["params"], over)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "detox"], cwd=repo, env=ENV,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = repo / "checkpoints/detox/state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before its first checkpoint"
    assert not (repo / "models/detoxified").exists()  # nothing half-written in the outputs
    assert not (repo / "metrics/detox").exists()

    out = dvc("repro", "detox", cwd=repo)
    log = out.stdout + out.stderr
    assert "resuming from checkpoint at step" in log
    step = int(log.split("resuming from checkpoint at step ")[1].split()[0])
    assert 2 <= step < 12
    for rel in ("metrics/detox/train.json", "metrics/detox/plots/metrics/objective/kl.tsv",
                "metrics/detox/plots/metrics/env/reward_mean.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel
    from safetensors.torch import load_file

    got = load_file(repo / "models/detoxified/adapter_model.safetensors")
    want = load_file(ref / "models/detoxified/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert not (repo / "checkpoints/detox").exists()  # finished runs clean up their checkpoint
    assert not list((repo / "metrics").glob(".*.tmp")) and not list((repo / "models").glob(".*.tmp"))


def test_html_report_is_self_contained_with_tables_and_images(ran):
    import base64
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
    assert len(page.imgs) == 2 and not page.links  # nothing fetched from elsewhere
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.tables == 3
    assert {"before", "after", "95% CI of the difference", "reward_diff", "response_after"} <= set(page.headers)
    assert {"PPO training curves", "Largest reward gains", "Largest reward losses"} <= set(page.h2)


def test_dvc_plots_render_training_curves_and_distributions(ran, tmp_path):
    plots = json.loads(dvc("plots", "show", "--json", cwd=ran).stdout)["data"]
    for name in ("PPO training curves", "Toxicity before vs after (samples per toxicity bin)", "Toxicity per sample",
                 "metrics/detox/plots/metrics/objective/kl.tsv", "metrics/sft_train/plots/metrics/train/loss.tsv"):
        assert plots[name][0]["type"] == "vega", name
    dvc("plots", "show", "-o", tmp_path / "plots", cwd=ran)
    assert "vega" in (tmp_path / "plots/index.html").read_text()


def test_new_weights_in_a_local_reward_folder_rerun_exactly_the_stages_that_use_it(ran, tmp_path, tiny):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    repo = copy_repo(ran, tmp_path / "repo")
    reward = tmp_path / "reward"
    shutil.copytree(tiny["dir"] / "reward", reward)
    set_params(repo, {"reward.model": str(reward)})
    dvc("repro", "lineage", cwd=repo)
    dvc("commit", "-f", cwd=repo)  # the same weights at a new path: accept the outputs as they are
    assert changed_stages(repo) == []
    before = json.loads((repo / "metrics/models/reward.json").read_text())

    model = AutoModelForSequenceClassification.from_pretrained(reward)
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(0.5)
    model.save_pretrained(reward)  # same folder, same params.yaml: only the weights changed
    dvc("repro", "lineage", cwd=repo)  # what `dvc repro` runs first
    after = json.loads((repo / "metrics/models/reward.json").read_text())
    assert after["resolved"] != before["resolved"] and after["resolved"].startswith("sha256:")
    assert changed_stages(repo) == ["baseline", "detox", "evaluate"]  # report then follows their outputs
    dry = dvc("repro", "--dry", cwd=repo).stdout
    assert ran_stages(dry) == ["baseline", "detox", "evaluate"]
    assert "Stage 'prepare' didn't change" in dry and "Stage 'sft' didn't change" in dry
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)["metrics/models/reward.json"]
    assert diff["resolved"]["new"] == after["resolved"]  # the lineage shows in `dvc metrics diff`
