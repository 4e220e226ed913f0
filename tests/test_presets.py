"""One-flag presets through DVC's own Hydra composition (.dvc/config: hydra.enabled, conf/presets.yaml): each
composes, with DVC's compose_and_dump (what `dvc exp run -S group=option` calls), into params that load_params
accepts; no choice at all gives params.yaml itself (the lab), so `dvc repro` on a fresh clone runs the lab. The base
is the fixed conf/params.yaml, so one experiment's flags never leak into the next, and params.yaml keeps its notes."""
import configparser
import importlib.util
import json
import shutil

import pytest
import yaml
from conftest import ROOT

from detoxkit.config import load_params
from detoxkit.params_file import annotate


def compose(tmp_path, overrides, out="composed.yaml"):
    """What `dvc exp run -S ...` writes to params.yaml (dvc.utils.hydra.compose_and_dump), in tmp_path."""
    from dvc.utils.hydra import compose_and_dump

    conf = tmp_path / "conf"
    if not conf.exists():  # links kept: were conf/params.yaml a link to ../params.yaml, each run would compose
        shutil.copytree(ROOT / "conf", conf, symlinks=True)  # from the last one's output (the bug this guards)
    out = tmp_path / out
    compose_and_dump(out, str(conf), None, "presets", "", overrides)
    return out


def test_dvc_composes_params_with_the_presets_enabled_from_a_fixed_base():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config["hydra"]["enabled"] == "true" and config["hydra"]["config_dir"] == "conf"
    assert not (ROOT / "conf/params.yaml").is_symlink()  # a link to params.yaml made each run compose from the last
    assert (ROOT / "conf/params.yaml").read_text() == (ROOT / "params.yaml").read_text()


def test_a_smoke_run_does_not_shrink_the_next_preset_run(tmp_path):
    """`-S size=smoke` then `-S preset=offline` in one workspace gives what `-S preset=offline` gives on a fresh clone."""
    fresh = compose(tmp_path / "fresh", ["preset=offline"], "params.yaml")
    compose(tmp_path / "used", ["preset=offline", "size=smoke"], "params.yaml")
    after = compose(tmp_path / "used", ["preset=offline"], "params.yaml")
    assert after.read_text() == fresh.read_text()
    assert yaml.safe_load(after.read_text())["methods"]["ppo"]["max_steps"] != 2


def test_params_yaml_keeps_its_notes_after_an_experiment_and_no_value_changes(tmp_path):
    """What `dvc exp run -S methods.ppo.learning_rate=3e-4` leaves, after lineage's annotate: the committed file's text
    with one value changed."""
    composed = compose(tmp_path, ["methods.ppo.learning_rate=3e-4"], "params.yaml")
    values = yaml.safe_load(composed.read_text())
    assert "#" not in composed.read_text()  # DVC's dump drops every note
    assert annotate(composed, ROOT / "conf/params.yaml")
    text = composed.read_text()
    assert yaml.safe_load(text) == values and values["methods"]["ppo"]["learning_rate"] == 3e-4
    committed = (ROOT / "params.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(committed, text.splitlines()) if a != b]
    assert len(text.splitlines()) == len(committed) and len(changed) == 1, changed
    assert "learning_rate: 0.0003" in changed[0][1] and "# default 1.41e-05: the lab's" in changed[0][1], changed
    assert not annotate(composed, ROOT / "conf/params.yaml")  # nothing to do the second time: the file is not touched
    plain = compose(tmp_path, [], "plain.yaml")  # no flags: the committed params.yaml, notes and all
    annotate(plain, ROOT / "conf/params.yaml")
    assert plain.read_text() == (ROOT / "params.yaml").read_text()


def test_a_misspelled_key_is_refused_by_dvc_and_a_forced_one_by_the_stages(tmp_path):
    """`-S methods.ppo.learning_rat=...`: DVC's composition refuses it naming the key (its message says to add `+`);
    with the `+`, DVC writes the key and the stages refuse params.yaml naming it, before any work."""
    from hydra.errors import ConfigCompositionException

    from detoxkit.errors import ParamsError

    with pytest.raises(ConfigCompositionException, match="Could not override 'methods.ppo.learning_rat'"):
        compose(tmp_path, ["methods.ppo.learning_rat=1e-4"])
    forced = compose(tmp_path, ["+methods.ppo.learning_rat=1e-4"])
    with pytest.raises(ParamsError, match="learning_rat"):
        load_params(forced)


def test_no_preset_is_params_yaml_itself_and_the_lab_preset_restores_it(tmp_path):
    lab = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert yaml.safe_load(compose(tmp_path, []).read_text()) == lab
    back = compose(tmp_path, ["task=lab", "policy=flan_t5", "scorers=lab"])
    assert yaml.safe_load(back.read_text()) == lab


@pytest.mark.parametrize("flags, want", [
    (["task=rtp", "policy=smollm2"], {"data.source": "allenai/real-toxicity-prompts", "data.filter": "challenging",
                                      "policy.model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                      "evaluation.max_new_tokens": 20, "reward.include_prompt": False}),
    (["preset=offline"], {"policy.model": "real/smollm2-135m-instruct", "data.source": "prompts/offline.jsonl",
                          "reward.model": "python:profanity_check:predict_prob", "methods.ppo.max_steps": 16}),
    (["preset=offline", "size=long"], {"methods.ppo.max_steps": 70, "methods.grpo.max_steps": 70,
                                       "reference.num_prompts": 256}),
    (["preset=offline", "size=smoke"], {"methods.ppo.max_steps": 2, "evaluation.samples_per_prompt": 2}),
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


def test_the_repository_carries_the_offline_prompts_with_their_licence(tmp_path):
    rows = (ROOT / "prompts/offline.jsonl").read_text().splitlines()
    assert len(rows) >= 300 and all('"prompt": {"text": ' in r for r in rows)
    assert len({json.loads(r)["prompt"]["text"] for r in rows}) == len(rows)  # no duplicate to leak into the test split
    assert "Apache-2.0" in (ROOT / "prompts/README.md").read_text()
    spec = importlib.util.spec_from_file_location("make_offline", ROOT / "prompts/make_offline.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    assert [json.dumps(r) for r in maker.rows()] == rows  # the file is what its script writes


def test_a_list_value_composes_and_is_annotated_in_yaml_1_2(tmp_path):
    """`dvc exp run -S 'best_of_n.on_trained=[dpo]'`: Hydra's list, dumped by DVC and annotated by lineage, is the list
    the stages read, and the note says the default as YAML writes it."""
    composed = compose(tmp_path, ["best_of_n.on_trained=[dpo]"], "params.yaml")
    assert annotate(composed, ROOT / "conf/params.yaml")
    assert load_params(composed).best_of_n.on_trained == ["dpo"]
    assert "# default false: also best-of-n on trained policies" in composed.read_text()
