"""Scorers that are Python functions, not transformers classifiers: `python:MODULE:FUNCTION`.

FUNCTION maps a list of texts to P(toxic) in [0, 1], one value per text (a list, a numpy array or a 1-D
tensor), as TRL's and verl's reward functions are callables beside reward models. MODULE is an importable
module (`python:profanity_check:predict_prob`, the alt-profanity-check package) or the path of a `.py` file
(`python:scorers/words.py:score`, relative to the repository root where the stages run). Such a scorer
runs its own code by design, as a stage command in dvc.yaml does; transformers models still never run
remote code.

As the reward, a probability p becomes the log-odds of not toxic, log((1 - p) / p), with p clipped to
[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] so that the reward stays finite (within +-9.21): the same scale
as a classifier's logit, which is what the lab's reward is.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sysconfig
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .settings import PROBABILITY_CLIP
from .errors import PipelineError
from .settings import PYTHON_SCORER as PREFIX
from .settings import scorer_display_name as display_name

PROBE = ["Thank you, that was a kind and helpful answer.", "You are a stupid idiot and I hate you."]


def is_python(ref: str) -> bool:
    return ref.startswith(PREFIX)


def parse(key: str, ref: str) -> tuple[str, str]:
    """(module or .py path, function name) of `python:MODULE:FUNCTION`."""
    module, sep, function = ref[len(PREFIX):].rpartition(":")
    if not sep or not module.strip() or not function.isidentifier():
        raise PipelineError(f"{key} {ref!r} is not python:MODULE:FUNCTION (e.g. python:profanity_check:predict_prob, "
                            "or python:path/to/file.py:score)")
    return module, function


def is_file(module: str) -> bool:
    return module.endswith(".py")


def join(prompt: str, response: str) -> str:
    """Prompt and response as one text, the way the lab scores them (a classifier and a Python scorer alike)."""
    return prompt + response if prompt.endswith((" ", "\n")) else prompt + " " + response


_FILES: dict = {}  # a .py scorer's module by resolved path: run once per process, as an import is


def _import(key: str, ref: str, module: str):
    if is_file(module):
        path = Path(module).expanduser()
        if not path.is_file():
            raise PipelineError(f"{key} {ref}: the file {module} does not exist (paths are relative to the "
                                "repository root, where the stages run)")
        resolved = path.resolve()
        if resolved not in _FILES:
            spec = importlib.util.spec_from_file_location(f"detox_scorer_{path.stem}", path)
            loaded = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(loaded)
            except (Exception, SystemExit) as err:  # sys.exit() in scorer code would end the stage with no outputs
                raise PipelineError(f"{key} {ref}: importing {module} raised {_raised(err)}") from None
            _FILES[resolved] = loaded
        return _FILES[resolved]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise PipelineError(f"{key} {ref}: no module named {err.name!r}; install the package that provides it "
                            "(e.g. pip install alt-profanity-check for profanity_check), or give a .py file") from None
    except (Exception, SystemExit) as err:
        raise PipelineError(f"{key} {ref}: importing {module} raised {_raised(err)}") from None


def _raised(err: BaseException) -> str:
    """What scorer code raised, in words; SystemExit (sys.exit, exit()) named as such: a scorer returns, never exits."""
    if isinstance(err, SystemExit):
        return (f"SystemExit({err.code!r}) (it called sys.exit or exit(); a scorer must return its values, never end "
                "the process)")
    return f"{type(err).__name__}: {err}"


def load_function(key: str, ref: str) -> Callable:
    module, function = parse(key, ref)
    fn = getattr(_import(key, ref, module), function, None)
    if fn is None:
        raise PipelineError(f"{key} {ref}: {module} has no attribute {function!r}")
    if not callable(fn):
        raise PipelineError(f"{key} {ref}: {module}.{function} is a {type(fn).__name__}, not a function of a "
                            "list of texts")
    return fn


class PythonScorer:
    """P(toxic) from a Python function, each call's output checked; serves as the reward or as a judge."""

    def __init__(self, key: str, ref: str, batch_size: int, include_prompt: bool = False):
        self.key, self.ref, self.name = key, ref, display_name(ref)
        self.fn, self.batch_size, self.include_prompt = load_function(key, ref), batch_size, include_prompt

    def probabilities(self, texts: list[str]) -> np.ndarray:
        out = [self._checked(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def _checked(self, texts: list[str]) -> np.ndarray:
        where = f"{self.key} {self.ref}"
        try:
            raw = self.fn(list(texts))
        except (Exception, SystemExit) as err:  # SystemExit too: else the stage would end with status 0 and no outputs
            raise PipelineError(f"{where} raised {_raised(err)}") from None
        if hasattr(raw, "detach"):  # a torch tensor
            raw = raw.detach().cpu().numpy()
        try:
            values = np.asarray(raw)
        except Exception:
            values = np.asarray(raw, dtype=object)
        contract = f"it must return one P(toxic) in [0, 1] per text (a list or 1-D array of {len(texts)} numbers)"
        if values.ndim != 1 or len(values) != len(texts):
            got = (f"a {type(raw).__name__} of shape {values.shape}" if values.ndim != 1 else
                   f"{len(values)} value{'' if len(values) == 1 else 's'}")
            raise PipelineError(f"{where} returned {got} for {len(texts)} texts; {contract}")
        if values.dtype == bool:
            values = values.astype(float)
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise PipelineError(f"{where} returned {values.dtype} values ({values[:2].tolist()}...); {contract}")
        values = values.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
        if len(bad):
            i = int(bad[0])
            raise PipelineError(f"{where} returned {values[i]} for text {i} ({texts[i][:60]!r}); {contract}, never "
                                "NaN")
        return values

    def score(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """As the reward: (log-odds of not toxic, P(toxic)) for each (prompt, response)."""
        texts = [join(p, r) for p, r in zip(prompts, responses)] if self.include_prompt else list(responses)
        p = self.probabilities(texts)
        clipped = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
        return np.log1p(-clipped) - np.log(clipped), p

    def toxicity(self, responses: list[str]) -> np.ndarray:
        """As a judge: P(toxic) of each response alone."""
        return self.probabilities(list(responses))


def probe(key: str, ref: str):
    """Import the scorer and call it once on two probe texts: a wrong module, object, shape, type, range or a
    NaN stops the stage that asks (prepare first), naming the setting."""
    PythonScorer(key, ref, batch_size=len(PROBE)).probabilities(PROBE)


def identity(key: str, ref: str) -> tuple:
    """What makes two scorer references the same scorer: the module's file (or name) and the function."""
    module, function = parse(key, ref)
    if is_file(module):
        return str(Path(module).expanduser().resolve()), function
    return module, function


def _source_file(module: str) -> Optional[Path]:
    """The module's file when it is not an installed release (a source tree, an editable install such as
    detoxkit's): None for a module in site-packages, whose version names its code. Only the top-level
    package is located (nothing imported)."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    origin = Path(spec.origin).resolve()
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if any(origin.is_relative_to(root) for root in installed):
        return None
    if not rest:
        return origin
    base = origin.parent.joinpath(*rest.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def manifest(key: str, ref: str) -> dict:
    """Which scorer exactly, for `lineage`: the package name and version that provide the module, or the
    sha256 of the module's file (a .py path, a module outside any distribution, or one from an editable
    install such as detoxkit.text_scorers), so a new version or an edited file reruns the stages that use it.
    The module is located, not imported (a submodule's parent packages are)."""
    module, function = parse(key, ref)
    entry = {"model": ref, "kind": "python", "function": function}
    if is_file(module):
        path = Path(module).expanduser()
        if not path.is_file():
            raise PipelineError(f"{key} {ref}: the file {module} does not exist")
        return {**entry, "resolved": f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}", "file": module}
    top = module.split(".")[0]
    dists = sorted(set(importlib.metadata.packages_distributions().get(top, [])))
    source = _source_file(module)
    if source is not None:  # a source tree (an editable install): its version does not change with its files
        return {**entry, "module": module,
                "resolved": f"sha256:{hashlib.sha256(source.read_bytes()).hexdigest()}"}
    if dists:
        versions = {d: importlib.metadata.version(d) for d in dists}
        return {**entry, "module": module, "package": ", ".join(dists),
                "resolved": ", ".join(f"{d}=={v}" for d, v in versions.items())}
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise PipelineError(f"{key} {ref}: no module named {module!r}; install the package that provides it, "
                            "or give a .py file")
    digest = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()
    return {**entry, "module": module, "resolved": f"sha256:{digest}"}
