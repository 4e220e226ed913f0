"""Stages on bad input: a clear one-line error before heavy work, and nothing already produced lost."""
import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_script, set_params

from detoxkit.config import PipelineError


def run_main(monkeypatch, cwd, module, *args):
    """Call a stage's main() in this process (fast), as `python stages/<module>.py args` would."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [module, *args])
    return __import__(module).main()


@pytest.fixture
def scratch(workdir, tmp_path):
    """A private copy of the workdir, so a test can break its params or data."""
    d = tmp_path / "w"
    shutil.copytree(workdir, d)
    return d


def test_bad_params_fail_fast_with_one_line_and_keep_old_outputs(scratch):
    before = sorted(p.name for p in (scratch / "data/prepared").rglob("*"))
    set_params(scratch, {"data.test_size": 2, "policy.model": "/nonexistent/model"})
    proc = run_script(scratch, "prepare.py", "--out", "data/prepared", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: params.yaml: data.test_size must be between 0 and 1 (exclusive), e.g. 0.2"
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (scratch / "data/prepared").rglob("*")) == before


def test_broken_data_file_is_reported_and_prepared_data_kept(scratch):
    bad = scratch / "bad.jsonl"
    bad.write_bytes(b'{"dialogue": "\xff\xfe broken", "summary": "s"}\n')
    set_params(scratch, {"data.source": str(bad)})
    proc = run_script(scratch, "prepare.py", "--out", "data/prepared", check=False)
    assert proc.returncode == 2 and "is not UTF-8" in proc.stderr and "Traceback" not in proc.stderr
    assert (scratch / "data/prepared/dataset_dict.json").exists()


def test_too_few_test_prompts_fails_before_any_model_loads(scratch, monkeypatch):
    set_params(scratch, {"evaluation.num_samples": 10_000, "reward.model": "/nonexistent"})
    with pytest.raises(PipelineError, match="asks for 10000 samples but the test split has only 13"):
        run_main(monkeypatch, scratch, "evaluate", "--policy", "start", "--sft", "models/sft", "--data",
                 "data/prepared", "--metrics", "m.json", "--samples", "s.csv")


def test_wrong_classifier_labels_are_refused_before_the_policy_loads(scratch, monkeypatch, tmp_path):
    from make_tiny import build_reward

    build_reward(tmp_path / "r", ["a text", "b text"], labels=("positive", "negative"))
    set_params(scratch, {"reward.model": str(tmp_path / "r"), "policy.model": "/nonexistent"})
    with pytest.raises(PipelineError, match=r"its labels are \['negative', 'positive'\]"):
        run_main(monkeypatch, scratch, "evaluate", "--policy", "start", "--sft", "models/sft", "--data",
                 "data/prepared", "--metrics", "m.json", "--samples", "s.csv")


DETOX_ARGS = ["--data", "data/prepared", "--sft", "models/sft", "--out", "models/detoxified", "--live",
              "metrics/detox", "--checkpoints", "checkpoints/detox"]


@pytest.mark.parametrize("stage, key, adapter, args", [
    ("detox", "lora", None, DETOX_ARGS),
    # sft reads the data before it loads the policy: a missing folder would be reported if the check came late
    ("sft", "sft.lora", "sft", ["--data", "data/missing", "--out", "models/sft", "--metrics", "m.json", "--live", "l"]),
])
def test_lora_target_typo_is_refused_before_any_weights_load(scratch, monkeypatch, stage, key, adapter, args):
    # reward.model does not exist: reaching it would mean the check came after heavy loading
    set_params(scratch, {f"{key}.target_modules": ["q", "v_proj"], "reward.model": "/nonexistent",
                         "policy.adapter": adapter})
    with pytest.raises(PipelineError, match=rf"^{key}.target_modules \['v_proj'\] match no layer of the 't5' "
                                            r"policy; its linear layers are \['k', 'lm_head', 'o', 'q', 'v'"):
        run_main(monkeypatch, scratch, stage, *args)
    assert not (scratch / "models").exists()


def test_nan_reward_stops_detox_naming_the_step(scratch, monkeypatch, tiny):
    import torch
    from transformers import AutoModelForSequenceClassification

    nan_reward = scratch / "nan_reward"
    shutil.copytree(tiny["dir"] / "reward", nan_reward)
    model = AutoModelForSequenceClassification.from_pretrained(nan_reward)
    with torch.no_grad():
        model.classifier.out_proj.bias.fill_(float("nan"))
    model.save_pretrained(nan_reward)
    set_params(scratch, {"reward.model": str(nan_reward)})
    with pytest.raises(PipelineError, match=r"PPO step 0: reward is not finite"):
        run_main(monkeypatch, scratch, "detox", *DETOX_ARGS)
    assert not (scratch / "models/detoxified").exists()


def test_kl_above_max_kl_stops_early_and_records_it(scratch, monkeypatch):
    set_params(scratch, {"ppo.max_kl": 1e-9, "ppo.max_steps": 6, "ppo.learning_rate": 0.01})
    run_main(monkeypatch, scratch, "detox", *DETOX_ARGS)
    train = json.loads((scratch / "metrics/detox/train.json").read_text())
    assert train["early_stopped"] and train["early_stop_kl"] > 1e-9
    assert train["steps_done"] == train["early_stop_step"] < 6
    kl_rows = (scratch / "metrics/detox/plots/metrics/objective/kl.tsv").read_text().splitlines()[1:]
    assert len(kl_rows) == train["steps_done"] and all(float(r.split()[1]) <= 1e-9 for r in kl_rows)
    assert (scratch / "models/detoxified/adapter_model.safetensors").exists()


def test_unreachable_hub_fails_at_once_with_one_message(scratch):
    import subprocess

    from conftest import ENV

    set_params(scratch, {"policy.model": "google/flan-t5-base"})
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: an unreachable Hub
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--out", "data/prepared"], cwd=scratch,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: could not load policy.model 'google/flan-t5-base': the Hugging Face Hub (http://127.0.0.1:9) "
        "cannot be reached from this machine. If it is in the local cache, rerun with HF_HUB_OFFLINE=1; otherwise "
        "point the setting at a local folder saved with save_pretrained (README: offline path; "
        "`python tools/make_tiny.py` builds a tiny offline pair)"]
