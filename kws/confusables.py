"""Confusable words of a keyword: its phonetic neighbours, spoken by espeak-ng, as negatives.

A keyword is taken for the words that sound most like it: one sound apart ("three" and
tree, free, threw), rhymes, words it starts or ends like, words inside it ("fire" in
"wildfire"). Enrolment finds them in a bundled phoneme lexicon (:data:`LEXICON_PATH`:
the 3,035 words of kws's vocabularies, as espeak-ng's en-us voice says them) by the
keyword's own espeak-ng phonemes, has espeak-ng speak each in a few voices, embeds
them and keeps them as the keyword's negatives (see :func:`kws.enroll.enroll`).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import centre_speech
from kws.data.synth import SpeakerSpec, speak_many
from kws.embedder import ASSETS, Embedder
from kws.errors import DataError
from kws.fileio import atomic_path
from kws.metrics import normalize
from kws.phonemes import edit_distance, phonemes, phonemes_of, speakable

log = logging.getLogger(__name__)

__all__ = [
    "ConfusableConfig",
    "LEXICON_PATH",
    "Neighbour",
    "VOICES",
    "confusable_embeddings",
    "find_neighbours",
    "keyword_phonemes",
    "load_lexicon",
    "speak_words",
    "write_lexicon",
]

LEXICON_PATH = ASSETS / "lexicon_en-us.tsv"
# Voices none of the synthetic corpus' testing speakers use, spread over accents, sexes and speeds.
VOICES = (
    SpeakerSpec("gmw/en-US", "", 175, 50, 100),
    SpeakerSpec("gmw/en-GB-x-rp", "f2", 160, 60, 100),
    SpeakerSpec("gmw/en-US", "m3", 190, 35, 100),
    SpeakerSpec("gmw/en", "f4", 170, 70, 100),
)
_VOWELS = set("aeiouæɑɒɐəɚɛɜɝɪɔʊʌ")


@dataclass(frozen=True)
class ConfusableConfig:
    """How many confusable words enrolment adds, and in how many voices.

    Attributes:
        max_words: the closest this many neighbours are spoken and kept.
        voices: each is spoken in the first this many of :data:`VOICES`.
    """

    max_words: int = 10
    voices: int = 4

    def validate(self) -> None:
        if self.max_words < 1 or not 1 <= self.voices <= len(VOICES):
            raise DataError(f"confusables: max_words must be >= 1 and voices 1-{len(VOICES)}, got {self}")


@dataclass(frozen=True)
class Neighbour:
    """A word that sounds like the keyword: ``distance`` phoneme edits away, and why it was chosen."""

    word: str
    distance: int
    kind: str


def write_lexicon(words: Sequence[str], path: str | Path = LEXICON_PATH) -> None:
    """Write ``word<TAB>phonemes`` lines for ``words`` (most frequent first), atomically."""
    lines = [f"{w}\t{' '.join(p)}\n" for w, p in zip(words, phonemes_of(words)) if p]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(lines), encoding="utf-8")


@functools.lru_cache(maxsize=4)
def load_lexicon(path: str | Path = LEXICON_PATH) -> dict[str, tuple[str, ...]]:
    """``{word: phonemes}`` from a lexicon file, in file order (most frequent first)."""
    try:
        rows = [line.split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the phoneme lexicon ({exc}); reinstall kws") from exc
    if any(len(r) != 2 for r in rows):
        raise DataError(f"{path}: malformed phoneme lexicon (expected word<TAB>phonemes lines); reinstall kws")
    return {w: tuple(p.split()) for w, p in rows}


def keyword_phonemes(text: str) -> tuple[str, ...] | None:
    """The keyword text's phonemes, or ``None`` when espeak-ng cannot say it as written
    (digits, symbols, another script)."""
    text = text.strip()
    if not speakable(text):
        return None
    return phonemes(text) or None


def _shared(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the common prefix of two phoneme sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _rhyme(p: Sequence[str]) -> tuple[str, ...]:
    """Phonemes from the last vowel on."""
    vowels = [i for i, t in enumerate(p) if t[0] in _VOWELS]
    return tuple(p[vowels[-1] :]) if vowels else tuple(p)


def find_neighbours(
    text: str, phones: Sequence[str], lexicon: dict[str, tuple[str, ...]], max_words: int
) -> list[Neighbour]:
    """The ``max_words`` lexicon words that sound most like the keyword (``phones``), closest first.

    A word qualifies when it is one sound away, rhymes, shares the first or last half of
    the keyword's sounds, or is a longer keyword's neighbour two sounds away. Homophones
    (no sound apart) and the keyword's own words are left out: no acoustic model can tell
    them apart, and a negative on them would silence the keyword.
    """
    own = set(text.lower().split())
    half = max(2, math.ceil(len(phones) / 2))
    rhyme = _rhyme(phones)
    found = []
    for rank, (word, p) in enumerate(lexicon.items()):
        if word in own or abs(len(p) - len(phones)) > len(phones):
            continue
        d = edit_distance(phones, p)
        if d == 0:
            continue
        if d == 1:
            kind = "one sound apart"
        elif len(rhyme) >= 2 and _rhyme(p) == rhyme and len(p) >= 2:
            kind = "rhymes"
        elif _shared(phones, p) >= min(half, len(p)) and len(p) >= 2:
            kind = "starts alike"
        elif _shared(phones[::-1], p[::-1]) >= min(half, len(p)) and len(p) >= 2:
            kind = "ends alike"
        elif d == 2 and len(phones) >= 5:
            kind = "two sounds apart"
        else:
            continue
        found.append((d, rank, Neighbour(word, d, kind)))
    return [n for _, _, n in sorted(found)[:max_words]]


def speak_words(words: Sequence[str], voices: Sequence[SpeakerSpec]) -> np.ndarray:
    """Each word in each voice (espeak-ng, a few at a time): ``(n_words, n_voices, 16000)`` float32."""
    clips = speak_many([(w, v) for w in words for v in voices])
    return np.stack(clips).reshape(len(words), len(voices), -1)


def confusable_embeddings(
    embedder: Embedder, text: str, config: ConfusableConfig = ConfusableConfig(), trim_db: float = 40.0
) -> tuple[list[Neighbour], np.ndarray] | None:
    """The keyword's neighbours and their embeddings ``(n_words, n_voices, D)`` (unit norm), or
    ``None`` when espeak-ng cannot phonemise ``text``. Each clip is centred in the model's
    window as enrolment centres its clips (``trim_db``)."""
    config.validate()
    phones = keyword_phonemes(text)
    if phones is None:
        return None
    neighbours = find_neighbours(text, phones, load_lexicon(), config.max_words)
    if not neighbours:
        return [], np.zeros((0, config.voices, embedder.dim), dtype=np.float32)
    audio = speak_words([n.word for n in neighbours], VOICES[: config.voices])
    n, v, _ = audio.shape
    windows = np.stack([centre_speech(x, embedder.window_samples, db=trim_db) for x in audio.reshape(n * v, -1)])
    emb = normalize(embedder(windows)).reshape(n, v, -1)
    log.debug("confusables of %r: %s", text, ", ".join(x.word for x in neighbours))
    return neighbours, emb.astype(np.float32)
