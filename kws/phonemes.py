"""Phonemes of words (espeak-ng) and minimal pairs: words one phoneme apart.

Minimal pairs ("cat"/"bat", "light"/"right") are the hardest case of few-shot
keyword spotting; the training ablation reports how often such words are taken
for one another. Phonemes come from espeak-ng's IPA transcription, split into
phonemes by espeak-ng itself (``--sep``), with stress marks dropped: stress
moves with the word, it is not a sound of its own.
"""

from __future__ import annotations

import itertools
import logging
import re
import tempfile
from collections.abc import Iterable, Sequence

from kws.data.synth import _espeak
from kws.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["edit_distance", "minimal_pairs", "phonemes", "phonemes_of", "speakable"]

_SEP = "_"
# Words in plain letters, one space, apostrophe or hyphen between them: what every speech engine reads
# as words (digits, symbols and other scripts are read out letter by letter, or not at all).
_SPEAKABLE = re.compile(r"[A-Za-z]+(?:[ '-][A-Za-z]+)*")
_STRESS = "ˈˌ"


def _split(line: str) -> tuple[str, ...]:
    tokens = [t.strip(_STRESS) for chunk in line.split() for t in chunk.split(_SEP)]
    return tuple(t for t in tokens if t)


def speakable(text: str) -> bool:
    """Can the speech engines say ``text`` as words (``hey computer``, ``o'clock``; not ``R2-D2``)?"""
    return _SPEAKABLE.fullmatch(text) is not None


def phonemes(word: str, voice: str = "en-us") -> tuple[str, ...]:
    """The phonemes of ``word`` as espeak-ng says it in ``voice``, e.g. ``cat`` → ``('k', 'a', 't')``."""
    if not word.strip():
        raise DataError("cannot transcribe an empty word")
    return _split(_espeak(["-q", "--ipa", f"--sep={_SEP}", "-v", voice, word]).decode("utf-8"))


def phonemes_of(words: Sequence[str], voice: str = "en-us") -> list[tuple[str, ...]]:
    """:func:`phonemes` of many words in one espeak-ng call (a call per word costs ~10 ms)."""
    words = list(words)
    if any(not w.strip() or "\n" in w for w in words):
        raise DataError("cannot transcribe an empty word or one with a line break")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as fh:
        # A full stop ends each clause: without it espeak-ng runs the lines together.
        fh.write("".join(f"{w}.\n" for w in words))
        fh.flush()
        lines = _espeak(["-q", "--ipa", f"--sep={_SEP}", "-v", voice, "-f", fh.name]).decode("utf-8").splitlines()
    if len(lines) != len(words):  # espeak-ng joined or split lines: fall back to one call per word
        return [phonemes(w, voice) for w in words]
    return [_split(line) for line in lines]


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two phoneme sequences (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def minimal_pairs(
    words: Iterable[str], max_distance: int = 1, voice: str = "en-us"
) -> list[tuple[str, str, int]]:
    """Pairs of ``words`` whose phonemes are at most ``max_distance`` edits apart (and not identical).

    Returns ``(a, b, distance)`` in the order the words were given. Homophones
    (distance 0) are left out: no acoustic model can tell them apart.
    """
    words = list(dict.fromkeys(words))
    phones = dict(zip(words, phonemes_of(words, voice)))
    pairs = []
    for a, b in itertools.combinations(words, 2):
        d = edit_distance(phones[a], phones[b])
        if 0 < d <= max_distance:
            pairs.append((a, b, d))
    log.info("%d minimal pair(s) among %d words", len(pairs), len(words))
    return pairs
