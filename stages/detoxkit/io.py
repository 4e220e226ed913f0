"""Atomic file output, logging and the stage entry point.

Every output goes to a temporary sibling first and is renamed into place, so an interrupted stage
leaves the previous complete file (or folder) or none, never a truncated one. The temporaries that
`tempfile` makes are private (0600, 0700); the output gets the mode a plain `open()` or `mkdir` gives
under the user's umask instead, so colleagues on a shared machine or a shared DVC cache can read it.

A stage ends with the `dvc` that started it (SIGTERM when its parent dies), and a SIGTERM never leaves an
output behind: before a training loop's first step ends it stops the stage at once; after that it waits for
the step to end, so that the loop saves a checkpoint first (checkpoint.checkpoint_step). A training stage
`hold`s its folders, so that a second one started on them is refused, naming the first.
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
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import PipelineError

log = logging.getLogger("detox")


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    # Library chatter (TRL deprecation notices, tokenizer hints) would bury our own progress lines.
    for noisy in ("transformers", "datasets", "peft", "trl", "accelerate", "absl", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported


def run_stage(main: Callable[[], None], parallel: bool = False):
    """Run a stage's main(): a PipelineError becomes a one-line message and exit status 2; a SIGTERM (sent by
    Linux when the `dvc` that started the stage dies) stops it without writing outputs, exit status 143. A
    `parallel` stage with compute.processes > 1, started outside a launcher, starts itself again under torchrun
    with that many processes (one machine; for several, launch the script with torchrun or accelerate yourself)."""
    setup_logging()
    if os.environ.get("DVC_STAGE"):  # dvc sets it for every stage command: end with that dvc, never outlive it
        _end_with_parent()
    compute = _compute()
    if compute is not None:
        compute.apply_threads()  # before main() loads torch's models
    if parallel and "LOCAL_RANK" not in os.environ:
        processes = compute.processes if compute is not None else 1
        if processes > 1:
            log.info("compute.processes %d: starting %s under torchrun", processes, sys.argv[0])
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   sys.argv[0], *sys.argv[1:]]
            child = subprocess.Popen(cmd, preexec_fn=_pdeathsig if _LINUX else None)
            signal.signal(signal.SIGTERM, lambda *_: child.terminate())  # torchrun passes it on to each process
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the processes themselves (one group)
            sys.exit(2 if child.wait() else 0)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)  # Ctrl-C: as SIGTERM (a second Ctrl-C stops at once)
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Stopped as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(128 + _STOP["signal"])
    _leave_process_group()


class Stopped(BaseException):
    """The stage was asked to stop (SIGTERM). A BaseException, as KeyboardInterrupt is: no `except Exception` in
    a library turns it into another error."""


_LINUX = sys.platform.startswith("linux")
_STOP = {"asked": False, "wait_for_step": False, "signal": signal.SIGTERM}
WHY = {signal.SIGTERM: "SIGTERM (the `dvc` that started this stage ended, or a kill)", signal.SIGINT: "SIGINT (Ctrl-C)"}


def _on_signal(signum, frame):
    again = _STOP["asked"] and signum == signal.SIGINT  # a second Ctrl-C: stop now, not at the step boundary
    _STOP["asked"], _STOP["signal"] = True, signum
    if again or not _STOP["wait_for_step"]:
        raise Stopped(f"{stop_reason()}; no output written")


def stop_asked() -> bool:
    """Whether a SIGTERM or a Ctrl-C asked this process to stop (checked at a training loop's step boundaries)."""
    return _STOP["asked"]


def stop_reason() -> str:
    """The signal that asked this process to stop, in words."""
    return WHY.get(_STOP["signal"], f"signal {_STOP['signal']}")


def wait_for_step():
    """From now on a SIGTERM only asks to stop, and the training loop stops at its next step boundary."""
    _STOP["wait_for_step"] = True


def _end_with_parent():
    """Have this process sent SIGTERM when the `dvc` (or torchrun launcher) that started it dies, so that no stage
    runs on, unseen by DVC, after it. The parent: prctl(PR_SET_PDEATHSIG) on Linux. The `dvc` itself when the parent
    is the shell it ran the command with and that shell forked rather than exec'd (dash, DVC's shell where $SHELL
    is unset or /bin/sh, lives on when dvc dies), and every parent off Linux: a thread that watches it."""
    _pdeathsig()
    owner = _owner()
    if owner is None or (_LINUX and owner.pid == os.getppid()):
        return
    import threading
    import time

    def watch():
        while owner.is_running():  # psutil: a reused pid does not count as the same process
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _pdeathsig():
    """SIGTERM to this process when its parent dies (Linux). Also a Popen preexec_fn: it starts no thread and takes
    no lock (prctl is looked up at import)."""
    if _LINUX:
        _PRCTL(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() == 1 and not _dvc_is_init():  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)


if _LINUX:
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


_SHELLS = {"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh", "busybox"}


def _owner():
    """The process whose end ends this one: the parent, or the parent's parent when the parent is a `SHELL -c`
    wrapper; None when it cannot be told. A wrapper already orphaned (its dvc died while this stage started) gives
    this process a SIGTERM now."""
    import psutil

    try:
        parent = psutil.Process().parent()
        cmd = parent.cmdline() if parent else []
        if not (cmd and os.path.basename(cmd[0]) in _SHELLS and "-c" in cmd[1:]):
            return parent
        owner = parent.parent()
        if owner is None or owner.pid == 1 and not _dvc_is_init():
            os.kill(os.getpid(), signal.SIGTERM)
        return owner
    except psutil.Error:
        return None


def _dvc_is_init() -> bool:
    """In a container whose first process is `dvc repro` itself, a parent pid of 1 is the living dvc."""
    try:
        return b"dvc" in Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: assume the parent lives


_HELD: dict[Path, int] = {}  # lock file: descriptor, held until the process ends (the OS releases it, on kill -9 too)


def hold(*folders):
    """Hold an exclusive lock on each folder for the life of this process, so that one process at a time trains
    into a checkpoint or output folder: the file .NAME.lock beside it (beside, so that removing the folder keeps
    it), flock'ed and holding this process's pid and command. A second holder is refused with a PipelineError
    naming the first. Under torchrun the first process holds the locks for all (the others write nothing); a
    process that holds a lock already (a stage's main() called again, in tests) keeps it."""
    import fcntl

    if int(os.environ.get("RANK", "0")) != 0:
        return
    for folder in map(Path, folders):
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = folder.parent / f".{folder.name}.lock"
        if lock.resolve() in _HELD:
            continue
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by started programs (O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            pid, _, cmd = holder.partition(" ")
            who = f"process {pid} ({cmd})" if pid.isdigit() else "another process"
            stop = f"`kill {pid}`" if pid.isdigit() else "it"
            raise PipelineError(
                f"{folder} is in use by {who}, which holds {lock}: another run of this stage (left running by a "
                f"stopped `dvc`?) still writes it. Wait for it to end, or stop it with {stop} (it saves a checkpoint "
                "at its next step), then rerun") from None
        os.ftruncate(fd, 0)
        os.write(fd, " ".join([str(os.getpid()), Path(sys.executable).name, *sys.argv]).encode() + b"\n")
        _HELD[lock.resolve()] = fd


def _leave_process_group():
    """Under torchrun: wait for every process, then leave the group. A process that exits while the others still
    write would tear down the group's threads under them ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _compute():
    """params.yaml's compute section; None when the file cannot be read (main() then says why)."""
    from .config import load_params

    try:
        return load_params().compute
    except PipelineError:
        return None


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
    """Yield a temporary folder; on success it replaces `path` whole, on error (or after a SIGTERM) it is removed.

    What was written in it (by us, by transformers, by safetensors, which writes 0600) gets the umask's modes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if stop_asked():  # a SIGTERM while the output was being written: it stays unwritten
            raise Stopped(f"{stop_reason()}; no output written")
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
