"""The whole run's estimate that the baseline prints (detoxkit.eta): the stages that are on, in proportion to the
measured rate and to each stage's size in params.yaml."""
import logging

import pytest

from conftest import ROOT

from detoxkit.config import load_params
from detoxkit.eta import COST, log_estimate, remaining_parts


def params(tmp_path, edit=None):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in (edit or {}).items():
        *path, name = key.split(".")
        node = raw
        for part in path:
            node = node[part]
        node[name] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def test_the_estimate_names_every_stage_that_is_on_and_scales_with_the_measured_rate(tmp_path, caplog):
    full = params(tmp_path)
    stages = [p.stage for p in remaining_parts(full, 1000, 100)]
    assert stages == ["reference", "train@ppo", "evaluate@ppo", "train@dpo", "evaluate@dpo", "train@grpo",
                      "evaluate@grpo", "best_of_n", "report", "publish"]
    off = params(tmp_path, {"methods.grpo.enabled": False, "methods.dpo.enabled": False, "best_of_n.enabled": False,
                            "reference.num_prompts": 0})
    assert [p.stage for p in remaining_parts(off, 1000, 100)] == ["train@ppo", "evaluate@ppo", "report", "publish"]
    on = params(tmp_path, {"best_of_n.on_trained": True})
    assert [p.stage for p in remaining_parts(on, 1000, 100)][1:4] == ["train@ppo", "evaluate@ppo", "bon@ppo"]
    listed = [p.stage for p in remaining_parts(params(tmp_path, {"best_of_n.on_trained": ["dpo"]}), 1000, 100)]
    assert [s for s in listed if s.startswith("bon@")] == ["bon@dpo"]
    off = params(tmp_path, {"best_of_n.on_trained": ["dpo"], "best_of_n.enabled": False})
    assert [p.stage for p in remaining_parts(off, 1000, 100) if p.stage.startswith(("bon@", "best_of_n"))] == []
    with caplog.at_level(logging.INFO, logger="detox.eta"):
        one = log_estimate(full, 1000, 100, 10.0, 1000)
        two = log_estimate(full, 1000, 100, 20.0, 1000)  # a machine half as fast: twice the time
    assert two == pytest.approx(2 * one) and one > 0
    assert "best_of_n" in caplog.records[0].getMessage() and "about" in caplog.records[0].getMessage()


def test_each_stage_is_sized_by_its_own_settings(tmp_path):
    base = {p.stage: p for p in remaining_parts(params(tmp_path), 1000, 100)}
    more = {p.stage: p for p in remaining_parts(params(tmp_path, {"methods.ppo.max_steps": 20}), 1000, 100)}
    assert more["train@ppo"].tokens == 2 * base["train@ppo"].tokens and more["train@grpo"] == base["train@grpo"]
    # evaluation: num_samples (200) capped at the 100 test prompts, k = 10, max_new_tokens 100; best-of-4 four times
    assert base["evaluate@ppo"].tokens == 100 * 10 * 100 and base["best_of_n"].tokens == 4 * 100 * 10 * 100
    assert base["train@ppo"].cost == COST["ppo"] > COST["evaluate"]  # a rollout also pays the training step
    assert log_estimate(params(tmp_path), 1000, 100, 0.0, 0) == 0.0  # nothing measured: no estimate
