"""Atomic file output, logging and the stage entry point.

Every output goes to a temporary sibling first and is renamed into place, so an interrupted stage
leaves the previous complete file (or folder) or none, never a truncated one.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .config import PipelineError

log = logging.getLogger("detox")


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    # Library chatter (TRL deprecation notices, tokenizer hints) would bury our own progress lines.
    for noisy in ("transformers", "datasets", "peft", "trl", "accelerate", "absl", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported


def run_stage(main: Callable[[], None]):
    """Run a stage's main(): a PipelineError becomes a one-line message and exit status 2."""
    setup_logging()
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def clear_stale(path: Path):
    """Remove temporaries of `path` that a killed run (kill -9 skips `finally`) left behind."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


def write_text(path, text: str):
    """Write `text` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the stage that produces it first (dvc repro)")
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def write_csv(path, rows: list[dict], columns: Iterable[str]):
    buf = io.StringIO()
    # Quote every text field: generated text can hold \r, commas or quotes; numbers stay bare.
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n",
                            quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the stage that produces it first (dvc repro)")
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder; on success it replaces `path` whole, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fingerprint(settings: dict, paths: Iterable) -> str:
    """sha256 of `settings` (JSON) and of every file under `paths`: identifies a run's inputs."""
    import hashlib

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in paths:
        if root is None:
            continue
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(str(f.relative_to(root) if f != root else f.name).encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
