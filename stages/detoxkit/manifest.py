"""Which model, data or adapter exactly: a content hash of a local file or folder, or the commit that a Hub
revision resolves to; for a Python scorer also what its results depend on besides its code (the versions of the
packages it imports, the hashes of its data files). The `lineage` stage writes these manifests for DVC; the
training stages fingerprint their checkpoints with them.

A local file's hash is cached by size and modification time in .cache/model-hashes.json (git-ignored), so an
unchanged 500 MB folder is not read again on every `dvc repro`.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

from . import python_scorer
from .errors import PipelineError
from .hub import OFFLINE, hub_reachable, is_local, missing_folder, under_real
from .io import fingerprint

log = logging.getLogger("detox.lineage")
CACHE = Path(".cache/model-hashes.json")  # {resolved file: [size, mtime_ns, sha256]}
RACY_NS = 2_000_000_000  # files modified less than 2 s ago are not cached (as git does with racy entries)


def read_cache(path: Path = CACHE) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:  # a damaged cache only costs a re-hash
        return {}


def file_sha256(f: Path, cache: dict) -> str:
    """sha256 of one file's bytes, from `cache` when its size and mtime are those cached."""
    st = f.stat()
    key = str(f.resolve())
    hit = cache.get(key)
    if not hit or hit[:2] != [st.st_size, st.st_mtime_ns]:
        inner = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                inner.update(chunk)
        hit = [st.st_size, st.st_mtime_ns, inner.hexdigest()]
        if time.time_ns() - st.st_mtime_ns > RACY_NS:  # a file written just now could change again
            cache[key] = hit                            # within the same mtime tick: hash it next time
    return hit[2]


def content_hash(path: Path, cache: dict) -> tuple[str, int, int]:
    """(sha256 over every file's relative path and content hash, file count, bytes) of a file or a folder
    (hidden files left out)."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                              p.relative_to(path).parts))
    if not files:
        raise PipelineError(f"{path} holds no files; point the setting at a folder saved with save_pretrained")
    outer, total = hashlib.sha256(), 0
    for f in files:
        name = f.name if f == path else f.relative_to(path).as_posix()
        outer.update(f"{name}\0{file_sha256(f, cache)}\n".encode())
        total += f.stat().st_size
    return outer.hexdigest(), len(files), total


def hub_commit(repo_id: str, revision, repo_type: str = "model") -> tuple:
    """(commit, how) for a Hub repository at `revision`: asked of the Hub, else read from the local cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HfHubHTTPError

    revision = revision or "main"
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision, "pinned"
    if not constants.HF_HUB_OFFLINE and hub_reachable():
        try:
            info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=10)
            return info.sha, "hub"
        except (HfHubHTTPError, OSError, ValueError) as err:
            log.warning("could not ask the Hub for %s@%s (%s); trying the local cache", repo_id, revision,
                        type(err).__name__)
    ref = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip(), "local cache"
    return None, "unresolved"


def _local(key: str, ref: str, cache: dict, what: str) -> dict:
    path = Path(ref).expanduser()
    if not path.exists():
        raise PipelineError(f"{key} {ref} does not exist; give {what}")
    digest, files, size = content_hash(path, cache)
    return {"model": ref, "kind": "local", "resolved": f"sha256:{digest}", "files": files, "bytes": size}


def _hub(key: str, ref: str, revision, repo_type: str) -> dict:
    commit, how = hub_commit(ref, revision, repo_type)
    if commit is None:
        log.warning("%s %s@%s: the commit could not be resolved (no Hub, not cached); its changes will go unseen "
                    "until it can be. Pin its revision to a commit to be sure%s", key, ref, revision,
                    f"; with no Hub reachable, {OFFLINE}" if _offline() else "")
    return {"model": ref, "kind": "hub", "revision": revision, "resolved": commit or f"unresolved:{revision}",
            "resolved_from": how}


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or not hub_reachable()  # remembered: no second connection


def model_manifest(key: str, ref: str, revision, cache: dict) -> dict:
    """A model setting (policy, reward, judge): a Python scorer's package version or file hash (with the packages
    and data files it reads), a local folder's content hash, or a Hub commit. A path under real/ is a local
    folder, built or not."""
    if python_scorer.is_python(ref):
        return {**python_scorer.manifest(key, ref), **scorer_inputs(key, ref, cache)}
    if is_local(ref) or under_real(ref):
        if not Path(ref).expanduser().is_dir():
            raise PipelineError(missing_folder(key, ref) or
                                f"{key} {ref} is not a folder; give a folder saved with save_pretrained or a Hub id")
        return _local(key, ref, cache, "a folder saved with save_pretrained or a Hub id")
    return _hub(key, ref, revision, "model")


def identity(entry: dict) -> str:
    """What a checkpoint must match of a model's manifest: the resolved hash or commit, and for a Python scorer the
    packages and data files it reads."""
    extra = {k: entry[k] for k in ("packages", "data") if entry.get(k)}
    return entry["resolved"] + (f" + {fingerprint(extra, [])}" if extra else "")


DATA = "DETOX_DATA"  # a scorer module's list of its data files and folders, relative to the module's folder
PACKAGES = "DETOX_PACKAGES"  # a scorer module's list of distributions it uses that its imports do not show
ROOT_MARKS = ("dvc.yaml", ".dvc", ".git")  # a folder holding one is a project, not a scorer's own folder


def scorer_inputs(key: str, ref: str, cache: dict) -> dict:
    """What a Python scorer's results depend on besides its code, read from its source (nothing is imported):
    `packages`, the installed version of each distribution its module imports (imports inside functions
    included; the release that holds it; the ones it names in DETOX_PACKAGES; and what they all require in turn),
    and `data`, the sha256
    of each file or folder its module names in DETOX_DATA, else, for a .py file in a folder of its own (not a
    project's root), of every file beside it (subfolders, hidden and .pyc files left out). A new version or an
    edited file then changes the manifest."""
    module, _ = python_scorer.parse(key, ref)
    source = _scorer_source(module)
    if source is None:  # compiled, or not found (python_scorer.manifest says so)
        return {}
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError):  # not Python as it stands: its sha256 (python_scorer.manifest) still changes,
        return {}                      # and `check` stops naming the file when it fails to import
    declared = {name: _literal_list(tree, name, key, ref) for name in (DATA, PACKAGES)}
    dists = {d for top in _imports(tree) for d in _distributions().get(top, [])}
    own = set(_distributions().get(module.split(".")[0], []))  # the release that holds the module, if any
    dists = dists | own if _installed(source) else dists - own  # a source tree's own version names no files
    for name in declared[PACKAGES] or []:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise PipelineError(f"{key} {ref}: {PACKAGES} names {name!r}, which is not installed") from None
        dists.add(name)
    entry = {"packages": _versions(dists)}
    if declared[DATA] is not None:
        entry["data"] = _declared_data(key, ref, source.parent, declared[DATA], cache)
    elif python_scorer.is_file(module) and not _project_root(source.parent):
        entry["data"] = {f.name: file_sha256(f, cache) for f in sorted(source.parent.iterdir())
                         if f.is_file() and not f.name.startswith(".") and f.suffix != ".pyc"}
    return entry


def _project_root(folder: Path) -> bool:
    """Whether a folder is a project's root (where the stages run, or holding dvc.yaml, .dvc or .git): its files
    are the project's, not a scorer's data."""
    return folder.resolve() == Path.cwd().resolve() or any((folder / m).exists() for m in ROOT_MARKS)


def _scorer_source(module: str) -> Optional[Path]:
    if python_scorer.is_file(module):
        path = Path(module).expanduser()
        return path if path.is_file() else None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return origin if origin is not None and origin.suffix == ".py" and origin.is_file() else None


def _installed(source: Path) -> bool:
    """Whether a module file is part of an installed release (site-packages), not a source tree."""
    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return any(source.resolve().is_relative_to(root) for root in roots)


@functools.cache
def _distributions() -> dict:
    return importlib.metadata.packages_distributions()


def _imports(tree: ast.AST) -> set[str]:
    """Top-level names of the modules a source imports (relative imports and the standard library left out)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


def _versions(dists: set[str]) -> dict:
    """{distribution: version} of `dists` and everything they require in turn (as installed; extras not
    followed)."""
    from packaging.requirements import Requirement

    found, todo = {}, sorted(dists)
    while todo:
        try:
            dist = importlib.metadata.distribution(todo.pop())
        except importlib.metadata.PackageNotFoundError:  # an optional requirement that is not installed
            continue
        name = dist.metadata["Name"]
        if name in found:
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(found.items()))


def _literal_list(tree: ast.Module, name: str, key: str, ref: str) -> Optional[list[str]]:
    """The list of strings a module assigns to `name` at its top level; None when it assigns none."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise PipelineError(f"{key} {ref}: {name} must be a list of strings written out in the module "
                                    f"(e.g. {name} = [\"words.txt\"])")
            return list(value)
    return None


def _declared_data(key: str, ref: str, folder: Path, names: list[str], cache: dict) -> dict:
    data = {}
    for name in names:
        path = folder / name
        if not path.exists():
            raise PipelineError(f"{key} {ref}: {DATA} names {name}, which does not exist in {folder}")
        data[name] = file_sha256(path, cache) if path.is_file() else f"sha256:{content_hash(path, cache)[0]}"
    return data


def data_manifest(source: str, revision, cache: dict) -> dict:
    """data.source: a local file's or folder's content hash, or the commit a Hub dataset revision resolves to."""
    if is_local(source):
        return _local("data.source", source, cache, "an existing file/folder or a Hub dataset id")
    return _hub("data.source", source, revision, "dataset")


def adapter_manifest(adapter: Optional[str], cache: dict) -> dict:
    """policy.adapter: a folder's content hash; `sft` (the sft stage's output, a DVC dependency of its own) and
    null are named as they are."""
    if adapter is None or adapter == "sft":
        return {"model": adapter, "kind": "stage" if adapter else "none", "resolved": adapter or "none"}
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise PipelineError(f"policy.adapter {adapter} is not a PEFT adapter folder (no adapter_config.json); give "
                            "a folder saved with save_pretrained, sft, or null")
    return _local("policy.adapter", adapter, cache, "a PEFT adapter folder, sft or null")
