"""The real-speech training pack (``shared/data/real_speech_train``): labelled word clips read
through its ``clips.csv``.

Every row names the clip's path, source, word, speaker, channel, context and licence.
Word clips are the rows with a word whose context is ``isolated`` or ``in sentence``
(a word cut out of running speech); a word clip longer than ``MAX_WORD_CLIP_S`` is a bad cut
and is left out, with a warning. Sentences (:func:`read_sentences`) are the rows
of whole recordings: ``whole sentence, word at S-E s`` (a keyword inside spontaneous
speech, at its labelled time) and ``sentence (no transcript)``. Speakers are kept apart between the training
and held-out splits by a stable hash of the speaker id, so a split never changes
when rows are added.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from kws.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "CLIPS_CSV", "COLUMNS", "MAX_WORD_CLIP_S", "PackClip", "PackSentence", "UNLABELLED_SENTENCE", "WORD_CONTEXTS",
    "heldout_speaker", "noise_files", "read_pack", "read_sentences",
]

CLIPS_CSV = "clips.csv"
WORD_CONTEXTS = ("isolated", "in sentence")
_WORD_AT = re.compile(r"whole sentence, word at ([0-9.]+)-([0-9.]+) s")
UNLABELLED_SENTENCE = "sentence (no transcript)"
# Twice the longest speech kws enrols (2 s): the pack's word clips last up to 2.6 s, and one
# "in sentence" clip of 5.5 s holds far more than its word.
MAX_WORD_CLIP_S = 4.0
COLUMNS = ("path", "source", "word", "speaker", "channel", "context", "licence")


@dataclass(frozen=True)
class PackClip:
    path: Path
    word: str
    speaker: str
    source: str
    context: str


def heldout_speaker(speaker: str, fraction: float) -> bool:
    """Is ``speaker`` in the held-out part (about ``fraction`` of the speakers)?"""
    h = int.from_bytes(hashlib.sha256(speaker.encode()).digest()[:4], "big")
    return h / 2**32 < fraction


@dataclass(frozen=True)
class PackSentence:
    """A whole recording: ``word`` spoken at ``[start, end]`` s inside it, or no word (``""``, ``None``)."""

    path: Path
    word: str
    speaker: str
    start: float | None
    end: float | None


def _rows(root: Path, split: str, heldout_fraction: float) -> list[dict[str, str]]:
    """The rows of ``root``'s ``clips.csv`` whose speaker is in ``split``."""
    if split not in ("training", "heldout", "all"):
        raise DataError(f"unknown split {split!r}; choose training, heldout or all")
    table = root / CLIPS_CSV
    if not table.is_file():
        raise DataError(f"{root}: not a real-speech pack (no {CLIPS_CSV})")
    with table.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    return [r for r in rows if split == "all" or heldout_speaker(r["speaker"], heldout_fraction) == (split == "heldout")]


def read_pack(root: str | Path, split: str = "all", heldout_fraction: float = 0.15) -> list[PackClip]:
    """The word clips of the pack at ``root``.

    Args:
        split: ``training`` (speakers not held out), ``heldout`` or ``all``.
        heldout_fraction: share of the speakers held out.

    Raises:
        DataError: no ``clips.csv``, a malformed one, an unknown split, or a clip that cannot be read.
    """
    root = Path(root)
    out = []
    for r in _rows(root, split, heldout_fraction):
        if not (r["word"] and r["context"] in WORD_CONTEXTS):
            continue
        path = root / r["path"]
        try:
            seconds = sf.info(str(path)).duration
        except (OSError, RuntimeError) as e:  # soundfile's errors derive from RuntimeError
            raise DataError(f"{path}: cannot read the clip ({e})") from e
        if seconds > MAX_WORD_CLIP_S:
            log.warning("%s: %r clip of %.1f s, longer than any word (%.0f s): left out", r["path"], r["word"],
                        seconds, MAX_WORD_CLIP_S)  # fmt: skip
            continue
        out.append(PackClip(path, r["word"].lower(), r["speaker"], r["source"], r["context"]))
    return out


def read_sentences(
    root: str | Path, split: str = "all", heldout_fraction: float = 0.15, labelled: bool = True
) -> list[PackSentence]:
    """The pack's whole sentences: with a labelled keyword inside (``labelled``), else those
    without a transcript (real running speech with no keyword). Arguments as :func:`read_pack`.

    A sentence whose keyword time is not an interval (the pack has ``0.000-0.000`` and an end
    before its start) is left out, with a warning: its keyword could be neither found nor
    silenced where it is."""
    root = Path(root)
    out = []
    for r in _rows(root, split, heldout_fraction):
        m = _WORD_AT.fullmatch(r["context"])
        if labelled and m and r["word"]:
            start, end = float(m[1]), float(m[2])
            if not start < end:
                log.warning("%s: keyword %r labelled at %s-%s s, not an interval: sentence left out",
                            r["path"], r["word"], m[1], m[2])  # fmt: skip
                continue
            out.append(PackSentence(root / r["path"], r["word"].lower(), r["speaker"], start, end))
        elif not labelled and r["context"] == UNLABELLED_SENTENCE:
            out.append(PackSentence(root / r["path"], "", r["speaker"], None, None))
    return out


def noise_files(root: str | Path) -> list[Path]:
    """The pack's recorded background-noise files."""
    return sorted((Path(root) / "noise").glob("*.ogg"))
