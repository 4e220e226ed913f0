"""Telling local folders from Hub ids, and turning Hub failures into one actionable message."""
from __future__ import annotations

import os
from pathlib import Path


def is_local(ref: str) -> bool:
    """A reference is local when it exists on disk or is written as a path (./x, /x, x/y/z, ~/x)."""
    if Path(ref).expanduser().exists():
        return True
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


def offline_hint(kind: str, ref: str, err: Exception) -> str:
    """Message for a Hub reference that could not be loaded (no network, no cache, typo)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set and it is not in the local cache" if offline else \
        "the Hugging Face Hub could not be reached or has no such repository, and nothing is cached"
    return (
        f"could not load {kind} {ref!r}: {why} ({type(err).__name__}: {text}). "
        f"Check the id, or use a local folder saved with save_pretrained (see docs/getting-started.md, offline: "
        f"local folders, HF_HUB_OFFLINE=1, and `python tools/make_tiny.py` for a tiny offline pair)"
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

    if constants.HF_HUB_OFFLINE or hub_reachable():
        return
    from .config import PipelineError

    raise PipelineError(
        f"could not load {kind} {ref!r}: the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached from "
        "this machine. If it is in the local cache, rerun with HF_HUB_OFFLINE=1; otherwise point the setting "
        "at a local folder saved with save_pretrained (docs/getting-started.md: offline; `python tools/make_tiny.py` "
        "builds a tiny offline pair)"
    )
