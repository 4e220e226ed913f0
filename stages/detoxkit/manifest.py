"""Which model, data or adapter exactly: a content hash of a local file or folder, or the commit that a Hub
revision resolves to. The `lineage` stage writes these manifests for DVC; `detox` fingerprints its
checkpoints with them.

A local file's hash is cached by size and modification time in .cache/model-hashes.json (git-ignored), so an
unchanged 500 MB folder is not read again on every `dvc repro`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional

from . import python_scorer
from .config import PipelineError
from .hub import hub_reachable, is_local

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
                    "until it can be. Pin its revision to a commit to be sure", key, ref, revision)
    return {"model": ref, "kind": "hub", "revision": revision, "resolved": commit or f"unresolved:{revision}",
            "resolved_from": how}


def model_manifest(key: str, ref: str, revision, cache: dict) -> dict:
    """A model setting (policy, reward, judge): a Python scorer's package version or file hash, a local
    folder's content hash, or a Hub commit."""
    if python_scorer.is_python(ref):
        return python_scorer.manifest(key, ref)
    if is_local(ref):
        if not Path(ref).expanduser().is_dir():
            raise PipelineError(f"{key} {ref} is not a folder; give a folder saved with save_pretrained or a Hub id")
        return _local(key, ref, cache, "a folder saved with save_pretrained or a Hub id")
    return _hub(key, ref, revision, "model")


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
