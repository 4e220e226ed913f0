"""Stage `lineage`: pin down exactly which models the pipeline uses, so a changed model reruns its stages.

    python stages/lineage.py --out metrics/models

Writes one small JSON file per model setting (policy.json, reward.json; judges.json for all judges).
A Python scorer (python:MODULE:FUNCTION) is named by the package and version that provide its module, or
by the sha256 of a local module's file. A local folder is named by a content hash of its files (cached by
size and modification time in .cache/, so an unchanged folder is not read again); a Hub id by the commit its
revision resolves to (asked of the Hub, or read from the local Hugging Face cache when offline). DVC runs this stage on every `dvc repro`
(`always_changed`); the stages that load a model depend on its file, so they rerun exactly when that model
changed.
The files are DVC metrics: `dvc metrics diff` and `dvc exp show` show the resolved commit or hash.
"""
import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

from detoxkit import python_scorer
from detoxkit.config import PipelineError, load_params
from detoxkit.hub import is_local
from detoxkit.io import run_stage, write_json

log = logging.getLogger("detox.lineage")
CACHE = Path(".cache/model-hashes.json")  # git-ignored: {file: [size, mtime_ns, sha256]}
RACY_NS = 2_000_000_000  # files modified less than 2 s ago are not cached (as git does with racy entries)


def folder_hash(path: Path, cache: dict) -> tuple[str, int, int]:
    """(sha256 over every file's relative path and content hash, file count, bytes)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise PipelineError(f"{path} holds no files; point the setting at a folder saved with save_pretrained")
    total, outer = 0, hashlib.sha256()
    for f in files:
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
        outer.update(f"{f.relative_to(path).as_posix()}\0{hit[2]}\n".encode())
        total += st.st_size
    return outer.hexdigest(), len(files), total


def hub_commit(repo_id: str, revision) -> tuple:
    """(commit, how) for a Hub model at `revision`: asked of the Hub, else read from the local cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HfHubHTTPError

    revision = revision or "main"
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision, "pinned"
    if not constants.HF_HUB_OFFLINE:
        from detoxkit.hub import hub_reachable

        if hub_reachable():
            try:
                return HfApi().model_info(repo_id, revision=revision, timeout=10).sha, "hub"
            except (HfHubHTTPError, OSError, ValueError) as err:
                log.warning("could not ask the Hub for %s@%s (%s); trying the local cache", repo_id, revision,
                            type(err).__name__)
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip(), "local cache"
    return None, "unresolved"


def manifest(key: str, ref: str, revision, cache: dict) -> dict:
    if python_scorer.is_python(ref):  # the package and version, or a local module's file hash
        return python_scorer.manifest(key, ref)
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise PipelineError(f"{key} {ref} is not a folder; give a folder saved with save_pretrained or a Hub id")
        digest, files, size = folder_hash(path, cache)
        return {"model": ref, "kind": "local", "resolved": f"sha256:{digest}", "files": files, "bytes": size}
    commit, how = hub_commit(ref, revision)
    if commit is None:
        log.warning("%s %s@%s: the commit could not be resolved (no Hub, not cached); its changes will go unseen "
                    "until it can be. Pin policy/reward.revision to a commit to be sure", key, ref, revision)
    return {"model": ref, "kind": "hub", "revision": revision, "resolved": commit or f"unresolved:{revision}",
            "resolved_from": how}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for one manifest file per model")
    args = parser.parse_args()

    params = load_params()
    try:
        cache = json.loads(CACHE.read_text(encoding="utf-8")) if CACHE.is_file() else {}
    except ValueError:  # a damaged cache only costs a re-hash
        cache = {}
    models = {"policy": (params.policy.model, params.policy.revision),
              "reward": (params.reward.model, params.reward.revision)}
    for name, (ref, revision) in models.items():
        entry = manifest(f"{name}.model", ref, revision, cache)
        write_json(Path(args.out) / f"{name}.json", entry)
        log.info("%s: %s -> %s", name, ref, entry["resolved"])
    judges = {j.name: manifest(f"evaluation.judges[{i}].model", j.model, j.revision, cache)
              for i, j in enumerate(params.evaluation.judges)}  # {} when judging is off
    write_json(Path(args.out) / "judges.json", judges)
    for name, entry in judges.items():
        log.info("judge %s: %s -> %s", name, entry["model"], entry["resolved"])
    write_json(CACHE, cache)


if __name__ == "__main__":
    run_stage(main)
