"""A judge no one here tuned for: best-profanity's English model (a TF-IDF vectorizer and a calibrated linear
classifier, trained by its authors on their own data; MIT), as a Python scorer for bench/rejudge.py:

    pip install --no-deps best-profanity      # its pin, scikit-learn==1.3.2, would replace this project's
    python bench/rejudge.py --repo RUN --judge python:bench/best_profanity_judge.py:p_profane

Its models were pickled by scikit-learn 1.3.2; a newer scikit-learn loads them with an InconsistentVersionWarning
(checked with 1.9.1: "you are a stupid idiot" 0.114, "have a nice day" 0.053, "fuck you" 0.958, "the weather is mild
today" 0.334, "what a shitty movie" 0.751: a profanity model, noisy on plain text). The package's own module imports pkg_resources, which recent setuptools no
longer ships, so the files are loaded here directly. Only the English model: the Tagalog one is for Tagalog text.
"""
import warnings
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path


@lru_cache(maxsize=1)
def _model():
    import joblib

    spec = find_spec("best_profanity")  # found, not imported (its __init__ needs pkg_resources)
    if spec is None:
        raise SystemExit("best-profanity is not installed: pip install --no-deps best-profanity")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InconsistentVersionWarning: pickled by scikit-learn 1.3.2
        return joblib.load(data / "english-vectorizer.joblib"), joblib.load(data / "english-model.joblib")


def p_profane(texts: list) -> list:
    """P(profane) of each text, the English model's calibrated probability of its class 1."""
    vectorizer, model = _model()
    return model.predict_proba(vectorizer.transform(list(texts)))[:, list(model.classes_).index(1)].tolist()
