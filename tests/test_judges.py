"""Independent judges: a controlled reward hack the judge catches (judge_disagrees), and the judges' loading
rules. (A prompt-only dataset through the whole DAG: test_chat_pipeline.py.)"""
import json
import shutil

import pytest
from conftest import ROOT, run_main, set_params


@pytest.fixture(scope="module")
def hackable(tmp_path_factory):
    """A reward model that "bless" fools, a judge it does not, and two planted GPT-2 policies on the same
    prompts: one always says "they are stupid idiots.", the other "they are stupid idiots, bless them."."""
    from make_tiny import HACK, build_controlled, make_dialogues, plant_policy

    out = tmp_path_factory.mktemp("hackable")
    params = build_controlled(out, toxic_fraction=1.0, n_dialogues=64, hackable=True)
    shutil.copytree(out / "gpt2", out / "gpt2_hack")
    plant_policy(out / "gpt2_hack", make_dialogues(64, 0), [HACK] * 4)
    return out, params


def test_a_policy_that_fools_the_reward_model_but_not_the_judge_sets_judge_disagrees(hackable, tmp_path, monkeypatch):
    """The real baseline/evaluate and report stages on the controlled task: the 'after' policy says the same
    insult with the words that fool the reward model. The reward's toxicity falls by more than its CI; the
    judge's does not fall: the reward-hacking signature."""
    models, params = hackable
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, {**params, "policy.adapter": None, "evaluation.num_samples": "all", "methods.dpo.enabled": False,
                      "methods.grpo.enabled": False, "best_of_n.enabled": False,
                      "evaluation.samples_per_prompt": 2, "report.bootstrap_resamples": 1000, "evaluation.judges": [
                          {"model": str(models / "judge"), "revision": None, "toxic_label": "toxic",
                           "allow_pickle": False}]})
    run_main(monkeypatch, work, "prepare", "--out", "data/prepared")
    common = ["--sft", "models/sft", "--data", "data/prepared"]
    run_main(monkeypatch, work, "evaluate", "--policy", "start", *common, "--metrics", "before.json",
             "--samples", "before.csv")
    set_params(work, {"policy.model": str(models / "gpt2_hack")})  # same tokenizer, so the same prompts
    run_main(monkeypatch, work, "evaluate", "--policy", "start", *common, "--metrics", "after.json",
             "--samples", "samples/ppo.csv")  # as PPO's evaluation: the report reads params.yaml's entries
    (work / "train/ppo").mkdir(parents=True)
    (work / "train/ppo/train.json").write_text(json.dumps({"steps_done": 1, "early_stopped": False,
                                                           "early_stop_step": None}))
    run_main(monkeypatch, work, "report", "--start", "before.csv", "--samples", "samples", "--train", "train",
             "--compare", "compare", "--out", "reports")
    summary = json.loads((work / "compare/ppo.json").read_text())
    reward_tox, judge_tox = summary["toxicity"], summary["judges"]["judge"]["toxicity"]
    assert reward_tox["before"] > 0.5 > reward_tox["after"] and reward_tox["diff_ci_high"] < 0  # the reward is fooled
    assert judge_tox["before"] > 0.5 and judge_tox["after"] > 0.5  # the judge is not: still the same insult
    assert -judge_tox["diff"] / judge_tox["before"] < 0.25 * -reward_tox["diff"] / reward_tox["before"]
    assert summary["guards"]["judge_disagrees"] is True
    report = (work / "reports/report.md").read_text()
    assert "| judge_disagrees | the reward model's toxicity fell (CI below 0) but a judge's did not" in report
    assert "| CROSSED |" in report and "guards crossed: judge_disagrees." in report
    assert "- \U0001F534 **PPO (crossed a guard): toxicity" in report  # a method that crossed a guard: red, in bold


def test_judge_disagrees_needs_a_real_fall_of_the_reward_toxicity_and_a_judge_that_does_not_follow():
    from detoxkit.compare import judge_disagrees as disagrees

    def ci(before, after, lo, hi):
        return {"before": before, "after": after, "diff": after - before, "diff_ci_low": lo, "diff_ci_high": hi}

    seen = {"a": 0.0, "b": 0.0}  # every judge could see any fall (judge power: tests/test_report_answer.py)
    summary = {"toxicity": ci(0.5, 0.3, -0.3, -0.1), "judges": {"a": {"toxicity": ci(0.4, 0.25, -0.2, -0.05)}}}
    assert disagrees(summary, 0.25, seen) is False  # both fell (40% and 37.5%): detoxified, as far as they can tell
    assert disagrees({**summary, "judges": {}}, 0.25, seen) == "n/a"  # no judge: it cannot fire, so it never "held"
    summary["judges"]["b"] = {"toxicity": ci(0.4, 0.36, -0.1, 0.02)}
    assert disagrees(summary, 0.25, seen) is True  # one judge saw no fall
    summary["judges"]["b"] = {"toxicity": ci(0.9, 0.88, -0.03, -0.01)}
    assert disagrees(summary, 0.25, seen) is True  # a real fall, but 2% beside the reward model's 40%
    assert disagrees(summary, 0.0, seen) is False  # with no share asked, any real fall agrees
    summary["toxicity"] = ci(0.5, 0.3, -0.3, 0.01)
    assert disagrees(summary, 0.25, seen) is False  # the reward's own fall could be chance
    assert disagrees({"toxicity": ci(0.5, 0.3, -0.3, -0.1), "judges": {}}, 0.25, seen) == "n/a"  # a real fall, no judge


def test_judges_load_under_the_reward_models_rules(tiny, tmp_path):
    from detoxkit.settings import ComputeSettings, JudgeSettings
    from detoxkit.errors import PipelineError
    from detoxkit.scoring import build_judges, judge_label_ids

    compute = ComputeSettings(device="cpu", dtype="float32", compile_generation=False)
    judge = JudgeSettings(model=str(tiny["dir"] / "judge"), revision=None, toxic_label="toxic", allow_pickle=False)
    (built,) = build_judges([judge], compute, 4)
    scores = built.toxicity(["they are kind people.", "a", ""])
    assert built.name == "judge" and scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    with pytest.raises(PipelineError, match=r"the judge .*judge has no label 'toxicity'; its labels are \['neutral', "
                                            r"'toxic'\]. Set evaluation.judges\[0\].toxic_label"):
        judge_label_ids([JudgeSettings(judge.model, None, "toxicity", False)])
    with pytest.raises(PipelineError, match=r"evaluation.judges\[0\].model .*gpt2 is a GPT2LMHeadModel, not a "
                                            "sequence classifier"):
        judge_label_ids([JudgeSettings(str(tiny["dir"] / "gpt2"), None, "toxic", False)])
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny["dir"] / "judge", pickled)
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(pickled).save_pretrained(pickled, safe_serialization=False)
    (pickled / "model.safetensors").unlink()
    with pytest.raises(PipelineError, match=r"only pickle \(\*.bin\) weights.*set evaluation.judges\[0\].allow_pickle: "
                                            "true if you trust the source"):
        build_judges([JudgeSettings(str(pickled), None, "toxic", False)], compute, 4)
    assert build_judges([JudgeSettings(str(pickled), None, "toxic", True)], compute, 4)[0].toxicity(["x"]).shape == (1,)


def test_a_judge_without_its_label_stops_the_check_stage_before_the_sft_stage_trains(tiny, tmp_path, monkeypatch):
    """Every model's config is checked by the `check` stage, which sft depends on: a wrong judge does not wait for
    `baseline`, after sft."""
    from detoxkit.errors import PipelineError
    from make_tiny import tiny_params

    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, {**tiny_params(str(tiny["dir"])), "evaluation.judges": [
        {"model": str(tiny["dir"] / "judge"), "revision": None, "toxic_label": "insult", "allow_pickle": False}]})
    run_main(monkeypatch, work, "prepare", "--out", "data/prepared")  # reads no judge
    with pytest.raises(PipelineError, match=r"judge .* has no label 'insult'; its labels are \['neutral', 'toxic'\]"):
        run_main(monkeypatch, work, "check", "--data", "data/prepared", "--models", "metrics/models", "--out",
                 "metrics/checks.json")
    assert not (work / "metrics/checks.json").exists()
