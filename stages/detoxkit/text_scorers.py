"""Ready-made Python scorers (`python:detoxkit.text_scorers:NAME`) for packages whose API is not already a
function of a list of texts returning P(toxic). `alt-profanity-check` needs none: use
`python:profanity_check:predict_prob` directly.
"""
from __future__ import annotations


def better_profanity(texts: list[str]) -> list[float]:
    """1.0 when better-profanity's word list (about 900 English swear words and their leetspeak spellings)
    finds a word of it in the text, else 0.0: a lexicon, independent of any trained classifier."""
    from better_profanity import profanity

    return [float(profanity.contains_profanity(t)) for t in texts]
