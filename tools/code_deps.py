"""Which code each DVC stage runs: its script and the `detoxkit` modules it imports, directly or through other
modules (imports inside functions included), read from the code with `ast`.

    python tools/code_deps.py          # compare with dvc.yaml; print each stage's missing and extra paths
    python tools/code_deps.py --write  # rewrite each stage's deps in dvc.yaml: its other deps, then its code
    python tools/code_deps.py --show   # print each stage's code dependencies as dvc.yaml lists them

Every stage in dvc.yaml must depend on exactly these files, so an edit reruns the stages that run the edited
code and no other (tests/test_code_deps.py checks it). Exit status 1 when dvc.yaml differs.

The train@NAME template runs `stages/${item.algorithm}.py` for every methods entry; DVC cannot put a list per
algorithm into deps, so its code is `stages/${item.algorithm}.py`, `stages/detoxkit/${item.algorithm}_engine.py`
and every other module any algorithm's script reaches (a module one algorithm alone imports reruns the others too:
never too few, at worst a rerun too many). Each algorithm's own code is its script and its engine.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIB = Path("stages/detoxkit")
PACKAGE = LIB.name


def imported_modules(path: Path, in_package: bool) -> set[str]:
    """Names of the detoxkit modules that the file at `path` imports (relative imports inside the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_package or node.module == PACKAGE:  # from . import x / from detoxkit import x
                base = node.module if node.level == 1 else None
                found |= {base.split(".")[0]} if base else {a.name for a in node.names}
            elif (node.module or "").startswith(PACKAGE + "."):
                found.add(node.module.split(".")[1])
    return found


def closure(script: Path, root: Path = ROOT) -> list[str]:
    """The script and every detoxkit module it reaches, as paths relative to `root` (and the package's
    __init__.py, which runs on the first import of any of them, when it holds code: see has_code)."""
    todo, seen = list(imported_modules(root / script, in_package=False)), set()
    while todo:
        name = todo.pop()
        file = root / LIB / f"{name}.py"
        if name in seen or not file.is_file():
            continue
        seen.add(name)
        todo += imported_modules(file, in_package=True)
    init_file = root / LIB / "__init__.py"
    init = {"__init__"} if seen and init_file.is_file() and has_code(init_file) else set()
    return [script.as_posix()] + [(LIB / f"{m}.py").as_posix() for m in sorted(seen | init)]


def has_code(path: Path) -> bool:
    """Whether a module runs anything when imported: a statement besides its docstring (the package's
    __init__.py, which runs on the first import of any module of the package, is code only when it has one)."""
    tree = ast.parse(path.read_bytes())  # bytes: a UTF-8 BOM or a coding line is Python's to read
    return len(tree.body) > (0 if ast.get_docstring(tree) is None else 1)


ALGORITHM = "${item.algorithm}"  # the train template's script and engine are named by the entry's algorithm


def algorithms() -> list[str]:
    """The algorithms a methods entry may name (detoxkit.methods.TRAINING)."""
    from detoxkit.methods import TRAINING  # the package is installed (pip install -e .)

    return list(TRAINING)


def template_closure(script: Path, root: Path = ROOT) -> list[str]:
    """The code of a template whose script is named by ${item.algorithm}: that script and engine by pattern, then the
    union of every algorithm's other modules."""
    own = [script.as_posix(), (LIB / f"{ALGORITHM}_engine.py").as_posix()]
    shared = set()
    for name in algorithms():
        mine = {p.replace(ALGORITHM, name) for p in own}
        reached = set(closure(Path(script.as_posix().replace(ALGORITHM, name)), root))
        if not mine <= reached:
            raise SystemExit(f"stages/{name}.py must import detoxkit.{name}_engine (the train template names the "
                             "engine by the algorithm)")
        shared |= reached - mine
    return own[:1] + sorted(shared | {own[1]})


def code_of(script: Path, root: Path = ROOT) -> list[str]:
    """A stage's code dependencies: its closure, or a template's by algorithm."""
    return template_closure(script, root) if ALGORITHM in script.as_posix() else closure(script, root)


def script_of(cmd: str) -> Path:
    """The stage script a dvc.yaml command runs (`python stages/x.py ...`, also after a launcher)."""
    return Path(next(w for w in cmd.split() if w.startswith("stages/") and w.endswith(".py")))


def compare(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """{stage: {"missing": [...], "extra": [...]}} for every stage whose code dependencies are not exactly its
    import closure; {} when dvc.yaml is right."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    wrong = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # a foreach template: one script for every item
        want = set(code_of(script_of(stage["cmd"]), root))
        have = {d for d in stage.get("deps", []) if d.startswith("stages/")}
        if want != have:
            wrong[name] = {"missing": sorted(want - have), "extra": sorted(have - want)}
    return wrong


def write(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> list[str]:
    """Rewrite every stage's `deps: [...]` in dvc.yaml (a flow list, as this repository writes them, with its YAML
    anchor if it has one): the deps that are not code, in their order, then the script and its import closure. A
    stage whose deps are an alias of another's (`deps: *name`, the same script on the same inputs) is left as it is.
    Returns the stages rewritten."""
    text = dvc_yaml.read_text(encoding="utf-8")
    changed = []
    for name, stage in yaml.safe_load(text)["stages"].items():
        body = stage.get("do", stage)
        deps = [d for d in body.get("deps", []) if not d.startswith("stages/")]
        deps += code_of(script_of(body["cmd"]), root)
        head = re.search(rf"^  {re.escape(name)}:.*$", text, re.M)
        end = re.compile(r"^  \S", re.M).search(text, head.end())  # the next stage, or the next top-level key
        stop = end.start() if end else len(text)
        if re.compile(r"^ +deps: \*\S+", re.M).search(text, head.end(), stop):
            continue  # an alias of another stage's list (`deps: *name`): written there; compare() checks it here too
        found = re.compile(r"^( +)deps: (&\S+ )?\[[^\]]*\]", re.M).search(text, head.end(), stop)
        if found is None:
            raise SystemExit(f"dvc.yaml: stage {name} has no `deps: [...]` flow list to rewrite; write one by hand")
        indent, anchor = found.group(1), found.group(2) or ""
        quoted = [f'"{d}"' if "$" in d else d for d in deps]  # ${item} in a flow list: quoted
        lines = textwrap.wrap(", ".join(quoted), 118, initial_indent=f"{indent}deps: {anchor}[",
                              subsequent_indent=" " * (len(indent) + 7), break_on_hyphens=False)
        new = "\n".join(lines) + "]"
        if found.group(0) != new:
            text = text[:found.start()] + new + text[found.end():]
            changed.append(name)
    dvc_yaml.write_text(text, encoding="utf-8")
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print each stage's code dependencies")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's deps lists to match the code")
    args = parser.parse_args()
    if args.write:
        changed = write()
        print(f"dvc.yaml: rewrote the deps of {', '.join(changed)}" if changed else "dvc.yaml: every stage's deps "
              "already match its code")
        return
    if args.show:
        for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
            print(f"{name}: [{', '.join(code_of(script_of(stage.get('do', stage)['cmd'])))}]")
        return
    wrong = compare()
    for name, diff in wrong.items():
        for path in diff["missing"]:
            print(f"dvc.yaml: stage {name} runs {path} but does not depend on it; add it to its deps")
        for path in diff["extra"]:
            print(f"dvc.yaml: stage {name} depends on {path} but does not import it; remove it from its deps")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
