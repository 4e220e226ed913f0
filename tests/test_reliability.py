"""Reliability round 4 (issue 37): repeated rows, YAML 1.1 against DVC's YAML 1.2, adapters byte-identical on reruns,
a damaged remote, a pickled starting adapter, a scorer that exits, a chat template that escapes Jinja's sandbox, a
full disk. Each failure ends in one `error:` line (exit status 2 from a stage) and leaves earlier outputs as they
were (docs/reliability.md names each test).
"""
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, ROOT, dvc, run_main, run_script, set_params, sh

from detoxkit.config import load_params, read_yaml
from detoxkit.errors import ParamsError, PipelineError

CHECK = ["--data", "data/prepared", "--models", "metrics/models", "--out", "metrics/checks.json"]


def one_error(proc) -> str:
    """The stage failed with exit status 2 and exactly one `error:` line, no traceback; returns that line."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checked(workdir, tmp_path_factory):
    """The tiny T5 workdir after lineage and check: what a later failing run must leave as it was."""
    d = tmp_path_factory.mktemp("rel") / "w"
    shutil.copytree(workdir, d)
    run_script(d, "lineage.py", "--out", "metrics/models")
    run_script(d, "check.py", *CHECK)
    return d


# --- 1 and 7: repeated rows and whitespace-only dialogues --------------------------------------------------------
def test_repeated_rows_never_reach_both_splits_and_whitespace_only_rows_are_dropped(workdir, tiny, tmp_path,
                                                                                    monkeypatch, caplog):
    """A data file appended to itself used to give a split whose 26 test dialogues were all train dialogues."""
    import datasets

    rows = [json.loads(line) for line in (tiny["dir"] / "dialogues.jsonl").read_text().splitlines()]
    respaced = [{**r, "dialogue": "  " + r["dialogue"].replace(" ", "  \t") + "\n"} for r in rows[:5]]
    blank = [{**rows[0], "dialogue": " \n\t " * 30}, {**rows[0], "dialogue": ""}]  # 120 characters, all whitespace
    source = tmp_path / "twice.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows + rows + respaced + blank))
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"data.source": str(source)})
    with caplog.at_level(logging.INFO, logger="detox.data"):
        run_main(monkeypatch, d, "prepare", "--out", "data/twice")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("read "))
    assert f"read {2 * len(rows) + 7} rows" in line and "2 empty or whitespace-only dropped" in line, line
    assert f"{len(rows) + 5} repeated prompts dropped: 51 train, 13 test" in line, line

    twice = datasets.load_from_disk(str(d / "data/twice"))
    once = datasets.load_from_disk(str(workdir / "data/prepared"))
    for split in ("train", "test"):  # the same split as the file without its copies: the first row of each is kept
        assert twice[split]["dialogue"] == once[split]["dialogue"]
    assert not set(twice["train"]["query"]) & set(twice["test"]["query"])
    run_main(monkeypatch, d, "prepare", "--out", "data/again")
    assert tree(d / "data/again") == tree(d / "data/twice")  # deterministic, byte for byte


def test_the_check_stage_refuses_test_prompts_that_are_train_prompts(checked, tmp_path):
    import datasets

    d = shutil.copytree(checked, tmp_path / "w")
    before = (d / "metrics/checks.json").read_bytes()
    data = datasets.load_from_disk(str(d / "data/prepared"))
    leaked = datasets.DatasetDict({"train": datasets.concatenate_datasets([data["train"], data["test"]]),
                                   "test": data["test"]})  # what prepare wrote from a doubled file before
    leaked.save_to_disk(str(d / "data/leaked"))  # a dataset cannot overwrite the files it is read from
    shutil.rmtree(d / "data/prepared")
    (d / "data/leaked").rename(d / "data/prepared")
    line = one_error(run_script(d, "check.py", *CHECK, check=False))
    assert "data/prepared: 13 of 13 test prompts are also train prompts" in line and "dvc repro -f prepare" in line
    assert (d / "metrics/checks.json").read_bytes() == before


# --- 2: params.yaml read as DVC reads it (YAML 1.2) ----------------------------------------------------------------
def set_raw(text: str, section: str, key: str, value: str) -> str:
    """params.yaml's text with `section.key` written as `value`, verbatim (set_params would write it as PyYAML does);
    `section` may be dotted (methods.ppo), one level of two-space indentation a part."""
    lines, path = text.splitlines(keepends=True), []
    depth = section.count(".") + 1
    for i, line in enumerate(lines):
        found = re.match(r"^( *)(\w+):", line)
        if not found:
            continue
        level = len(found.group(1)) // 2
        path = path[:level] + [found.group(2)]
        if level == depth and ".".join(path[:-1]) == section and path[-1] == key:
            lines[i] = f"{found.group(1)}{key}: {value}\n"
            return "".join(lines)
    raise KeyError(f"{section}.{key}")


def dvc_reads(path: Path) -> dict:
    """params.yaml as DVC reads it for `params:` dependencies, dvc.lock and `dvc params diff`."""
    from dvc.fs import LocalFileSystem
    from dvc.utils.serialize import load_path

    return load_path(str(path), LocalFileSystem())


@pytest.mark.parametrize("written, value", [("010", 10), ("0x10", 16), ("1_000", 1000)])
def test_an_integer_reads_as_dvc_reads_it(tmp_path, written, value):
    """PyYAML (YAML 1.1) read `methods.ppo.max_steps: 010` as 8, while DVC recorded 10."""
    path = tmp_path / "params.yaml"
    path.write_text(set_raw((ROOT / "params.yaml").read_text(), "methods.ppo", "max_steps", written))
    assert dvc_reads(path)["methods"]["ppo"]["max_steps"] == value
    assert read_yaml(path) == dvc_reads(path)
    assert load_params(path).methods["ppo"].max_steps == value


@pytest.mark.parametrize("written", ["yes", "on", "off", "no"])
def test_a_yaml_11_boolean_is_text_as_for_dvc_and_refused_naming_the_key(tmp_path, written):
    path = tmp_path / "params.yaml"
    path.write_text(set_raw((ROOT / "params.yaml").read_text(), "best_of_n", "enabled", written))
    assert dvc_reads(path)["best_of_n"]["enabled"] == written == read_yaml(path)["best_of_n"]["enabled"]
    with pytest.raises(ParamsError) as err:
        load_params(path)
    want = "true" if written in ("yes", "on") else "false"
    assert str(err.value) == (f"params.yaml: best_of_n.enabled is {written!r}, which YAML 1.2 (DVC's reading, and the "
                              f"stages') takes as text, not a boolean as YAML 1.1 did; write {want}")


def test_a_key_given_twice_stops_the_first_stage_naming_it_and_its_line(checked, tmp_path):
    """DVC refuses such a file; PyYAML kept the last value silently."""
    d = shutil.copytree(checked, tmp_path / "w")
    text = (d / "params.yaml").read_text()
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("    max_steps:") and
              any(x.startswith("  ppo:") for x in lines[:i]))  # the ppo entry's
    lines.insert(at + 1, "    max_steps: 8\n")
    (d / "params.yaml").write_text("".join(lines))
    with pytest.raises(Exception, match="YAML file structure is corrupted"):
        dvc_reads(d / "params.yaml")
    before = tree(d / "metrics")
    line = one_error(run_script(d, "lineage.py", "--out", "metrics/models", check=False))
    assert line.startswith(f"error: params.yaml line {at + 2}: methods.ppo.max_steps is given twice (first on line {at + 1})")
    assert tree(d / "metrics") == before


def test_no_stage_reads_yaml_with_pyyaml():
    """params.yaml is read through config.read_yaml (ruamel.yaml, as DVC): no stage or library module reads YAML with
    PyYAML (publish writes its model card's front matter with it)."""
    for file in sorted((ROOT / "stages").rglob("*.py")):
        text = file.read_text()
        if re.search(r"^\s*import yaml\b", text, re.M):
            assert "yaml.safe_load" not in text and "yaml.load(" not in text, file


# --- 3 and 8: adapters saved byte-identically, and a full disk in one line ----------------------------------------
SAVE = """
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSeq2SeqLM

from detoxkit.models import save_adapter

torch.manual_seed(0)
model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1]),
                       LoraConfig(r=2, target_modules=["q", "k", "v", "o", "wi", "wo"]))
save_adapter(model, Path(sys.argv[2]))
"""


def test_an_adapter_saved_twice_is_byte_identical_whatever_the_hash_seed(tiny, tmp_path):
    """PEFT keeps target_modules as a set and wrote it in the order of the process's string hashes, so `dvc repro -f`
    with nothing changed rewrote models/trained/ppo/adapter_config.json and DVC called every later stage stale."""
    saved = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"seed{seed}"
        subprocess.run([sys.executable, "-c", SAVE, str(tiny["dir"] / "policy"), str(out)], check=True, timeout=300,
                       env={**ENV, "PYTHONHASHSEED": seed})
        saved.append(tree(out))
    assert saved[0] == saved[1] == saved[2]
    config = json.loads(saved[0]["adapter_config.json"])
    assert config["target_modules"] == ["k", "o", "q", "v", "wi", "wo"]
    assert list(config) == sorted(config)


def test_every_adapter_is_saved_through_one_helper():
    """ppo, grpo and dpo save through models.save_detoxified, sft through models.save_adapter; publish copies."""
    for file in sorted((ROOT / "stages").rglob("*.py")):
        calls = [line for line in file.read_text().splitlines() if ".save_pretrained(" in line]
        if file.name == "models.py":
            assert len(calls) == 1 and "peft_model.save_pretrained" in calls[0], calls
        else:
            assert calls == [], (file, calls)


@pytest.fixture
def lora(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    return get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(tiny["dir"] / "policy"),
                          LoraConfig(r=2, target_modules=["q", "v"]))


FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors' own words


@pytest.mark.parametrize("where", ["weights", "config"])
def test_a_full_disk_while_saving_an_adapter_is_one_line_and_keeps_the_previous_output(lora, tmp_path, monkeypatch,
                                                                                       where):
    import peft.config
    import peft.peft_model
    from safetensors import SafetensorError

    from detoxkit.io import atomic_dir
    from detoxkit.models import save_adapter

    def full_weights(*args, **kwargs):
        raise SafetensorError(FULL)

    def full_config(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "weights":
        monkeypatch.setattr(peft.peft_model, "safe_save_file", full_weights)
    else:
        monkeypatch.setattr(peft.config.PeftConfigMixin, "save_pretrained", full_config)
    out = tmp_path / "models/trained/ppo"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")  # the previous run's output
    with pytest.raises(PipelineError) as err, atomic_dir(out) as tmp:
        save_adapter(lora, tmp)
    message = str(err.value)
    assert message.startswith(f"{out}: the disk is full (") and "\n" not in message, message
    assert message.endswith("free disk space and rerun `dvc repro`")
    assert tree(out) == {"adapter_config.json": b"{}"} and os.listdir(out.parent) == ["ppo"]  # no temporary left


def test_another_write_error_is_not_taken_for_a_full_disk(lora, tmp_path, monkeypatch):
    import peft.peft_model
    from safetensors import SafetensorError

    from detoxkit.models import save_adapter

    def broken(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", broken)
    with pytest.raises(SafetensorError, match="Permission denied"):
        save_adapter(lora, tmp_path / "out")


# --- 4: a damaged object on the remote is refused on pull ---------------------------------------------------------
REMOTE = [sys.executable, ROOT / "tools/remote.py"]


def _flip_a_byte(file: Path):
    mode = file.stat().st_mode
    os.chmod(file, 0o644)
    data = bytearray(file.read_bytes())
    data[0] ^= 0x01
    file.write_bytes(bytes(data))
    os.chmod(file, mode)  # DVC trusts a read-only object on a local remote without hashing it: keep it read-only


def test_a_tampered_object_on_the_remote_is_refused_on_pull(tmp_path):
    repo, storage = tmp_path / "repo", tmp_path / "storage"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    sh(*REMOTE, "setup", "team", storage, cwd=repo)  # the team setup: default remote, verify true, in .dvc/config
    assert "verify = true" in (repo / ".dvc/config").read_text()
    (repo / "data.txt").write_text("rows that must arrive as they were pushed\n")
    dvc("add", "-q", "data.txt", cwd=repo)
    sh(*REMOTE, "push", cwd=repo)
    (obj,) = [p for p in storage.rglob("*") if p.is_file()]
    md5 = obj.parent.name + obj.name
    _flip_a_byte(obj)

    def pull(*cmd):
        shutil.rmtree(repo / ".dvc/cache", ignore_errors=True)
        (repo / "data.txt").unlink(missing_ok=True)
        return sh(*cmd, cwd=repo, check=False)

    proc = pull(sys.executable, "-m", "dvc", "pull")
    assert proc.returncode != 0 and "data.txt" in proc.stderr, proc.stderr
    assert not (repo / "data.txt").exists()
    assert not [p for p in (repo / ".dvc/cache").rglob("*") if p.is_file()]  # the damaged copy was not kept

    dvc("remote", "modify", "team", "--unset", "verify", cwd=repo)  # a remote added before this setup
    proc = pull(sys.executable, "-m", "dvc", "pull")  # the symptom: pulled silently, damaged
    assert proc.returncode == 0 and (repo / "data.txt").read_text() != "rows that must arrive as they were pushed\n"
    proc = pull(*REMOTE, "pull")  # the team tool turns verify on for this machine first
    assert proc.returncode != 0 and "data.txt" in proc.stderr and "set verify true in .dvc/config.local" in proc.stderr
    assert not (repo / "data.txt").exists() and md5 not in {p.parent.name + p.name for p in (repo / ".dvc/cache")
                                                            .rglob("*") if p.is_file()}


# --- 5: a pickled starting adapter ----------------------------------------------------------------------------------
@pytest.fixture
def pickled_adapter(lora, tmp_path):
    """A PEFT adapter folder whose adapter_model.bin holds more than tensors (a call of print, when unpickled)."""
    import torch

    folder = tmp_path / "pickled"
    lora.save_pretrained(folder, safe_serialization=False)
    weights = torch.load(folder / "adapter_model.bin", weights_only=True)
    weights["payload"] = Payload()
    torch.save(weights, folder / "adapter_model.bin")
    return folder


class Payload:
    def __reduce__(self):
        return print, ("this ran while the weights were loaded",)


def test_a_pickled_adapter_is_refused_by_the_check_stage_and_the_loader_in_one_line(checked, pickled_adapter, tiny,
                                                                                    tmp_path):
    from detoxkit.settings import ComputeSettings, PolicySettings
    from detoxkit.models import load_policy

    d = shutil.copytree(checked, tmp_path / "w")
    before = (d / "metrics/checks.json").read_bytes()
    file = pickled_adapter / "adapter_model.bin"
    set_params(d, {"policy.adapter": str(pickled_adapter), "policy.allow_pickle": False})
    run_script(d, "lineage.py", "--out", "metrics/models")
    line = one_error(run_script(d, "check.py", *CHECK, check=False))
    assert f"adapter {pickled_adapter} has no adapter_model.safetensors, only pickle weights" in line
    assert "set policy.allow_pickle: true if you trust the source" in line

    set_params(d, {"policy.allow_pickle": True})  # trusted: still only what loads without running code
    proc = run_script(d, "check.py", *CHECK, check=False)
    line = one_error(proc)
    assert line == (f"error: {file} holds the Python object print, which weights-only loading refuses "
                    "(unpickling it could run code); save the adapter again with safetensors "
                    "(save_pretrained(folder, safe_serialization=True)) from a source you trust")
    assert "weights_only=False" not in proc.stderr and "this ran" not in proc.stdout + proc.stderr
    assert (d / "metrics/checks.json").read_bytes() == before

    policy = PolicySettings(model=str(tiny["dir"] / "policy"), revision=None, adapter=str(pickled_adapter),
                            allow_pickle=True)
    with pytest.raises(PipelineError) as err:  # the loader itself, reached without the stages' early check
        load_policy(policy, ComputeSettings(device="cpu", dtype="float32", compile_generation=False), pickled_adapter)
    assert str(err.value) == line.removeprefix("error: ")


# --- 6: a Python scorer that calls sys.exit() ---------------------------------------------------------------------
def test_a_scorer_that_exits_is_its_error_not_a_silent_exit_0(checked, tmp_path):
    d = shutil.copytree(checked, tmp_path / "w")
    before = (d / "metrics/checks.json").read_bytes()
    scorer = tmp_path / "quits.py"
    scorer.write_text("import sys\n\ndef score(texts):\n    sys.exit(0)\n")
    set_params(d, {"reward.model": f"python:{scorer}:score"})
    run_script(d, "lineage.py", "--out", "metrics/models")
    line = one_error(run_script(d, "check.py", *CHECK, check=False))
    assert line.startswith(f"error: reward.model python:{scorer}:score raised SystemExit(0) (it called sys.exit")
    assert (d / "metrics/checks.json").read_bytes() == before

    from detoxkit.python_scorer import probe

    scorer.write_text("raise SystemExit('no GPU here')\n\ndef score(texts):\n    return [0.0] * len(texts)\n")
    with pytest.raises(PipelineError, match=r"evaluation.judges\[0\].model python:.*quits.py:score: importing .* "
                                            r"raised SystemExit\('no GPU here'\)"):
        probe("evaluation.judges[0].model", f"python:{scorer}:score")


# --- 7: a chat template that tries to leave Jinja's sandbox --------------------------------------------------------
def test_a_chat_template_that_escapes_the_sandbox_stops_prepare_in_one_line(workdir, tiny, tmp_path):
    from make_tiny import tiny_params

    llama = shutil.copytree(tiny["dir"] / "llama", tmp_path / "llama")
    (llama / "chat_template.jinja").write_text(  # the tokenizer's chat template (transformers keeps it in this file)
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages[0]['content'] }}")
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {**tiny_params(str(tiny["dir"]), "llama"), "policy.model": str(llama), "policy.adapter": None})
    before = tree(d / "data/prepared")
    line = one_error(run_script(d, "prepare.py", "--out", "data/prepared", check=False))
    assert line.startswith(f"error: prompt.chat_template is true, but the chat template of the tokenizer in {llama} "
                           "tries to reach outside Jinja's sandbox (SecurityError: ")
    assert line.endswith("or set prompt.chat_template: false")
    assert tree(d / "data/prepared") == before
