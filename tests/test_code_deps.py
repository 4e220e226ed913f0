"""Nothing stale in the code: every stage in dvc.yaml depends on its script and exactly the detoxkit modules it
imports (directly or through other modules, imports inside functions included), computed from the code."""
import shutil
import subprocess
import sys

from conftest import ROOT, make_tiny  # noqa: F401 (conftest sets up the offline environment)

from detoxkit.io import load_script

code_deps = load_script(ROOT / "tools" / "code_deps.py")


def test_every_stage_depends_on_exactly_the_code_it_imports():
    assert code_deps.compare() == {}


def test_the_closure_follows_imports_inside_functions_and_through_other_modules():
    sft = code_deps.closure(code_deps.Path("stages/sft.py"))
    assert "stages/detoxkit/evaluation.py" in sft  # imported inside sft's main()
    assert "stages/detoxkit/generation.py" in sft  # only through evaluation.py
    assert "stages/detoxkit/render.py" not in sft
    report = code_deps.closure(code_deps.Path("stages/report.py"))
    assert "stages/detoxkit/render.py" in report and "stages/detoxkit/ppo_engine.py" not in report


def test_the_package_init_is_a_dependency_only_when_it_holds_code(tmp_path):
    """__init__.py runs on the first import of any detoxkit module: a docstring alone changes nothing a stage does,
    so no stage depends on it; a statement in it makes it every stage's dependency (and compare() says so)."""
    assert not code_deps.has_code(ROOT / "stages/detoxkit/__init__.py")
    assert "stages/detoxkit/__init__.py" not in code_deps.closure(code_deps.Path("stages/sft.py"))
    for name in ("stages", "tools", "dvc.yaml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    init = tmp_path / "stages/detoxkit/__init__.py"
    init.write_text(init.read_text() + "import os\n")
    assert "stages/detoxkit/__init__.py" in code_deps.closure(code_deps.Path("stages/sft.py"), tmp_path)
    wrong = code_deps.compare(tmp_path / "dvc.yaml", tmp_path)
    assert wrong["sft"] == {"missing": ["stages/detoxkit/__init__.py"], "extra": []} and "report" in wrong


def test_a_new_import_without_a_new_dependency_fails_naming_the_path(tmp_path):
    for name in ("stages", "tools", "dvc.yaml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    prepare = tmp_path / "stages/prepare.py"
    prepare.write_text(prepare.read_text().replace("def main():", "def main():\n    from detoxkit import render\n", 1))
    assert code_deps.compare(tmp_path / "dvc.yaml", tmp_path) == {
        "prepare": {"missing": ["stages/detoxkit/render.py"], "extra": []}}
    proc = subprocess.run([sys.executable, str(tmp_path / "tools/code_deps.py")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["dvc.yaml: stage prepare runs stages/detoxkit/render.py but does not depend "
                                        "on it; add it to its deps"]


def test_the_train_template_runs_each_algorithms_script_with_its_engine_and_every_shared_module():
    """dvc.yaml's train@NAME runs stages/<algorithm>.py for every methods entry: its code is that script and
    detoxkit/<algorithm>_engine.py by name, and every other module any algorithm's script reaches; substituted for
    each algorithm the code registry knows, nothing any script imports is missing."""
    import yaml

    from detoxkit.methods import TRAINING

    train = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert train["foreach"] == "${methods}" and "stages/${item.algorithm}.py" in train["do"]["cmd"]
    deps = train["do"]["deps"]
    assert "stages/${item.algorithm}.py" in deps and "stages/detoxkit/${item.algorithm}_engine.py" in deps
    for algorithm in TRAINING:
        mine = {d.replace("${item.algorithm}", algorithm) for d in deps}
        assert set(code_deps.closure(code_deps.Path(f"stages/{algorithm}.py"))) <= mine, algorithm
    assert not any("ppo" in d or "grpo" in d or "dpo" in d for d in deps)  # no algorithm is named: the template


def test_write_puts_back_a_dropped_dependency_and_touches_nothing_else(tmp_path):
    for name in ("stages", "tools", "dvc.yaml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    text = (tmp_path / "dvc.yaml").read_text()
    dropped = text.replace("stages/detoxkit/preferences.py, ", "", 1)  # from the first stage that lists it
    assert dropped != text
    (tmp_path / "dvc.yaml").write_text(dropped)
    assert code_deps.compare(tmp_path / "dvc.yaml", tmp_path) != {}
    assert code_deps.write(tmp_path / "dvc.yaml", tmp_path) == ["reference"]
    assert (tmp_path / "dvc.yaml").read_text() == text  # byte for byte: the other stages and the comments as they were


def test_write_rewrites_an_anchored_list_once_for_the_stages_that_alias_it(tmp_path):
    """baseline's deps are anchored (`&evaluate_start`) and best_of_n's an alias of them: a dependency dropped from
    the anchored list is missing from both, and --write puts it back in the one list, anchor kept, alias untouched."""
    for name in ("stages", "tools", "dvc.yaml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    text = (tmp_path / "dvc.yaml").read_text()
    assert "deps: &evaluate_start [" in text and "deps: *evaluate_start" in text
    start = text.index("deps: &evaluate_start [")
    dropped = text[:start] + text[start:].replace("stages/detoxkit/config.py, ", "", 1)
    assert dropped != text
    (tmp_path / "dvc.yaml").write_text(dropped)
    assert sorted(code_deps.compare(tmp_path / "dvc.yaml", tmp_path)) == ["baseline", "best_of_n"]
    assert code_deps.write(tmp_path / "dvc.yaml", tmp_path) == ["baseline"]
    assert (tmp_path / "dvc.yaml").read_text() == text
