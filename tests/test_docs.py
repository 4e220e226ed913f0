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
    page = (tmp_path / "site/getting-started/index.html").read_text()  # commands wrap (extra.css), diagrams do not
    assert "stylesheets/extra.css" in page and 'class="language-bash highlight"' in page


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


MODULES = sorted(p.stem for p in (ROOT / "stages/detoxkit").glob("*.py") if p.stem != "__init__")
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def test_no_page_points_outside_the_repository():
    """A user has the repository, not the folder beside it: a page names a file of their own instead."""
    outside = {p.name: n for p in PAGES for n, line in enumerate(p.read_text().splitlines(), 1) if "../shared" in line}
    assert not outside, outside


def test_the_api_reference_has_a_section_for_every_module_and_no_other():
    text = (ROOT / "docs/reference.md").read_text()
    entries = re.findall(r"^::: detoxkit\.(\w+)\s*$", text, flags=re.M)
    missing, unknown = set(MODULES) - set(entries), set(entries) - set(MODULES)
    assert not missing and not unknown, f"docs/reference.md lacks {sorted(missing)}, names no module {sorted(unknown)}"
    assert len(entries) == len(set(entries))
    for name in entries:  # each under its own heading, the line before it
        assert re.search(rf"^## `detoxkit\.{name}`\n\n::: detoxkit\.{name}$", text, flags=re.M), name


def _library_imports() -> dict[str, set[str]]:
    """Each detoxkit module's imports of other detoxkit modules (inside functions too)."""
    import ast

    graph = {}
    for name in MODULES:
        found = set()
        for node in ast.walk(ast.parse((ROOT / f"stages/detoxkit/{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detoxkit."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("detoxkit.")}
        graph[name] = found & set(MODULES)
    return graph


def test_the_architecture_page_names_every_module_and_its_layering_holds():
    text = (ROOT / "docs/architecture.md").read_text()
    unnamed = [m for m in MODULES if not re.search(rf"[`( ]{m}[`,:) ]", text)]
    assert not unnamed, f"docs/architecture.md does not name {unnamed}"
    graph = _library_imports()
    leaves = re.split(r",\s+", re.search(r"Leaf modules\s+\(([^)]*)\)", text).group(1).replace("`", ""))
    assert all(graph[leaf] <= set(leaves) for leaf in leaves), {leaf: graph[leaf] for leaf in leaves}
    done, path = set(), []

    def visit(name):  # depth-first: a module met again while on the path closes a cycle
        assert name not in path, " -> ".join(path[path.index(name):] + [name])
        if name not in done:
            path.append(name)
            for dep in sorted(graph[name]):
                visit(dep)
            path.pop()
            done.add(name)

    for name in MODULES:
        visit(name)
    engines = {m for m in MODULES if m.endswith("_engine")}
    assert not {m: graph[m] & engines for m in set(MODULES) - engines if graph[m] & engines}  # the library's side


def test_the_home_page_readme_and_site_description_name_every_method():
    from detoxkit.methods import ALGORITHMS

    labels = {a.name: a.label for a in ALGORITHMS}

    description = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["site_description"]
    for where, text in (("mkdocs.yml site_description", description),
                        ("docs/index.md", (ROOT / "docs/index.md").read_text()),
                        ("README.md's first paragraph", (ROOT / "README.md").read_text().split("\n\n")[1])):
        assert not [label for label in labels.values() if label not in text], (where, labels)
