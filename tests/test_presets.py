"""One-flag presets through DVC's own Hydra composition (.dvc/config: hydra.enabled, conf/presets.yaml): each
composes, with DVC's compose_and_dump (what `dvc exp run -S group=option` calls), into params that load_params
accepts; no choice at all gives params.yaml itself (the lab), so `dvc repro` on a fresh clone runs the lab."""
import configparser
import shutil

import pytest
import yaml
from conftest import ROOT

from detoxkit.config import load_params


def compose(tmp_path, overrides):
    from dvc.utils.hydra import compose_and_dump

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, symlinks=True)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # conf/params.yaml links to ../params.yaml
    out = tmp_path / "composed.yaml"
    compose_and_dump(out, str(conf), None, "presets", "", overrides)
    return out


def test_dvc_composes_params_with_the_presets_enabled():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config["hydra"]["enabled"] == "true" and config["hydra"]["config_dir"] == "conf"
    assert (ROOT / "conf/params.yaml").resolve() == (ROOT / "params.yaml").resolve()


def test_no_preset_is_params_yaml_itself_and_the_lab_preset_restores_it(tmp_path):
    lab = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert yaml.safe_load(compose(tmp_path, []).read_text()) == lab
    shutil.rmtree(tmp_path / "conf")
    back = compose(tmp_path, ["task=lab", "policy=flan_t5", "scorers=lab"])
    assert yaml.safe_load(back.read_text()) == lab


@pytest.mark.parametrize("flags, want", [
    (["task=rtp", "policy=smollm2"], {"data.source": "allenai/real-toxicity-prompts", "data.filter": "challenging",
                                      "policy.model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                      "evaluation.max_new_tokens": 20, "reward.include_prompt": False}),
    (["preset=offline"], {"policy.model": "real/smollm2-135m-instruct", "data.source": "prompts/offline.jsonl",
                          "reward.model": "python:profanity_check:predict_prob", "ppo.max_steps": 70}),
    (["preset=offline", "size=smoke"], {"ppo.max_steps": 2, "evaluation.samples_per_prompt": 2}),
    (["task=jsonl", "data.source=mine.jsonl"], {"data.source": "mine.jsonl", "data.dialogue_column": "prompt",
                                                "policy.adapter": None}),
])
def test_each_preset_is_three_flags_or_fewer_and_valid(tmp_path, flags, want):
    assert len(flags) <= 3
    params = load_params(compose(tmp_path, flags))  # every rule between settings holds
    raw = params.raw
    for key, value in want.items():
        node = raw
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_the_repository_carries_the_offline_prompts_with_their_licence():
    rows = (ROOT / "prompts/offline.jsonl").read_text().splitlines()
    assert len(rows) >= 150 and all('"prompt": {"text": ' in r for r in rows)
    assert "Apache-2.0" in (ROOT / "prompts/README.md").read_text()
