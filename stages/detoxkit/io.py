"""Atomic file output, logging and the stage entry point.

Every output goes to a temporary sibling first and is renamed into place, so an interrupted stage
leaves the previous complete file (or folder) or none, never a truncated one. The temporaries that
`tempfile` makes are private (0600, 0700); the output gets the mode a plain `open()` or `mkdir` gives
under the user's umask instead, so colleagues on a shared machine or a shared DVC cache can read it.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
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


def run_stage(main: Callable[[], None], parallel: bool = False):
    """Run a stage's main(): a PipelineError becomes a one-line message and exit status 2. A `parallel` stage with
    compute.processes > 1, started outside a launcher, starts itself again under torchrun with that many
    processes (one machine; for several, launch the script with torchrun or accelerate yourself)."""
    setup_logging()
    if parallel and "LOCAL_RANK" not in os.environ:
        processes = _processes()
        if processes > 1:
            log.info("compute.processes %d: starting %s under torchrun", processes, sys.argv[0])
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   sys.argv[0], *sys.argv[1:]]
            sys.exit(2 if subprocess.call(cmd) else 0)
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _leave_process_group()


def _leave_process_group():
    """Under torchrun: wait for every process, then leave the group. A process that exits while the others still
    write would tear down the group's threads under them ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _processes() -> int:
    """compute.processes from params.yaml; 1 when the file cannot be read (main() then says why)."""
    from .config import load_params

    try:
        return load_params().compute.processes
    except PipelineError:
        return 1


def load_script(path):
    """Import a script (a stage in stages/, a tool in tools/) by its path, once, under its file's name.

    For tests and benchmarks: the scripts are entry points, not part of this package, so they are not on the
    import path, and nothing needs to put them there."""
    path = Path(path)
    if path.stem not in sys.modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # first, as import does: dataclasses and pickle look the module up
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[path.stem]
            raise
    return sys.modules[path.stem]


def umask() -> int:
    """The process's umask (read by setting it and setting it back: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_modes(root: Path):
    """Give `root` (a file or a folder, and everything under it) the modes `open()`/`mkdir` would under the
    umask: 0666 or 0777 less the umask. Executable files keep their x bits; links are left alone."""
    mask = umask()
    paths = [root] if root.is_file() else [root, *root.rglob("*")]
    for p in paths:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)


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
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would make the output private
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
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise PipelineError(f"{path} is not valid JSON ({str(err).splitlines()[0][:120]}): it is damaged or "
                            "truncated; restore it (dvc checkout, or rerun the stage that writes it: dvc repro) or "
                            "fix it by hand") from None


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
    """Yield a temporary folder; on success it replaces `path` whole, on error it is removed.

    What was written in it (by us, by transformers, by safetensors, which writes 0600) gets the umask's modes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        public_modes(tmp)
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


PLACEHOLDER = "SKIPPED.md"  # the one file of an output whose stage is off (sft, DPO): constant, so cached


def write_placeholder(path, note: str):
    """The output folder of a stage that is off: one constant note, so nothing downstream sees a change."""
    with atomic_dir(path) as tmp:
        write_text(tmp / PLACEHOLDER, note)


def is_placeholder(path) -> bool:
    return (Path(path) / PLACEHOLDER).is_file()


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
