"""A new user's probe, part 1: every section of params.yaml given a wrong type, a negative number and an unknown key.

Each case runs the first stage of `dvc repro` (`lineage`, which validates the whole file, as every stage does) as a
process and asserts three things: the error's first line names the setting, the exit status is 2, and the outputs
of an earlier run are intact, byte for byte.
"""
import shutil

import pytest
from conftest import run_script, set_params

# (setting, wrong value). A negative number where the section has a number that must not be negative; prompt and
# policy hold no numbers.
CASES = [("seed", "forty-two"), ("seed", -1)]
for section, wrong_type, negative in [
    ("data", ("min_chars", "many"), ("max_prompt_tokens", -1)),
    ("prompt", ("chat_template", "yes"), None),
    ("policy", ("allow_pickle", 3), None),
    ("reward", ("batch_size", "sixteen"), ("batch_size", -16)),
    ("compute", ("device", 5), ("threads", -2)),
    ("methods.ppo.lora", ("r", "big"), ("r", -32)),
    ("generation", ("top_k", "none"), ("min_length", -5)),
    ("methods.ppo", ("learning_rate", "fast"), ("batch_size", -16)),
    ("evaluation", ("num_samples", "many"), ("samples_per_prompt", -10)),
    ("best_of_n", ("enabled", "yes"), ("n", -4)),
    ("methods.dpo", ("beta", "small"), ("min_pairs", -4)),
    ("reference", ("n", "four"), ("num_prompts", -4)),
    ("sft", ("epochs", "one"), ("batch_size", -8)),
    ("report", ("confidence", "high"), ("qualitative_rows", -10)),
    ("guard", ("max_kl", "five"), ("max_kl", -5.0)),
]:
    CASES.append((f"{section}.{wrong_type[0]}", wrong_type[1]))
    if negative:
        CASES.append((f"{section}.{negative[0]}", negative[1]))
    CASES.append((f"{section}.colour", "blue"))  # an unknown key


@pytest.fixture(scope="module")
def ran_lineage(workdir, tmp_path_factory):
    d = tmp_path_factory.mktemp("probe") / "w"
    shutil.copytree(workdir, d)
    run_script(d, "lineage.py", "--out", "metrics/models")
    return d


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "params.yaml" and ".cache" not in p.parts}


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_bad_setting_stops_the_first_stage_naming_it_with_exit_2_and_outputs_intact(ran_lineage, key, value):
    d = ran_lineage
    good = (d / "params.yaml").read_text()
    before = snapshot(d)
    try:
        set_params(d, {key: value})
        proc = run_script(d, "lineage.py", "--out", "metrics/models", check=False)
    finally:
        (d / "params.yaml").write_text(good)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: params.yaml:") and key in errors[0], errors
    assert snapshot(d) == before
