"""The documentation: the site builds with `mkdocs build --strict` (a broken link or anchor fails it), the parameters
page documents every key of params.yaml and names no other, and the README stays a first screen."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENV, ROOT

MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # no --quiet: it hides the warnings --strict counts


def build(root: Path, site: Path):
    return subprocess.run([*MKDOCS, "--site-dir", str(site)], cwd=root, env={**ENV, "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=300)


def test_the_site_builds_strictly(tmp_path):
    proc = build(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "load_params" in (tmp_path / "site/reference/index.html").read_text()  # the API from the docstrings


@pytest.mark.parametrize("planted, named", [("[the old page](no-such-page.md)", "no-such-page.md"),
                                            ("[a section](dvc.md#no-such-section)", "no-such-section")])
def test_a_broken_link_or_anchor_fails_the_build(tmp_path, planted, named):
    for name in ("docs", "stages", "mkdocs.yml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    page = tmp_path / "docs/scale-out.md"
    page.write_text(page.read_text() + f"\nSee {planted}.\n")
    proc = build(tmp_path, tmp_path / "site")
    assert proc.returncode != 0 and named in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def _keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_parameters_page_documents_every_key_once_and_names_no_other():
    keys = list(_keys(yaml.safe_load((ROOT / "params.yaml").read_text())))
    rows = re.findall(r"^\| `([^`]+)` \|", (ROOT / "docs/parameters.md").read_text(), flags=re.M)
    assert sorted(rows) == sorted(keys), (set(rows) ^ set(keys))  # each once, none unknown
    comments = [line for line in (ROOT / "params.yaml").read_text().splitlines() if line.lstrip().startswith("#")]
    assert len(comments) <= 4  # the file's header; every other comment sits on its key's line


def test_the_readme_is_a_first_screen_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 10_000
    ci = (ROOT / ".ci/run").read_text()
    tests = next(line for line in readme.splitlines() if "pytest -q tests" in line)
    install, run = tests.split(" && .venv/bin/python -m pytest", 1)
    assert install in ci and (".venv/bin/python -m pytest" + run) in ci  # CI runs the README's test command
    assert "dvc repro" in readme and "reports/report.md" in readme and "dvc metrics show" in readme
