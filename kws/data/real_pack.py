"""The real-speech training pack (``shared/data/real_speech_train``): labelled word clips read
through its ``clips.csv``.

Every row names the clip's path, source, word, speaker, channel, context and licence.
Word clips are the rows with a word whose context is ``isolated`` or ``in sentence``
(a word cut out of running speech). Speakers are kept apart between the training
and held-out splits by a stable hash of the speaker id, so a split never changes
when rows are added.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path


from kws.errors import DataError

__all__ = ["CLIPS_CSV", "COLUMNS", "PackClip", "WORD_CONTEXTS", "heldout_speaker", "noise_files", "read_pack"]

CLIPS_CSV = "clips.csv"
WORD_CONTEXTS = ("isolated", "in sentence")
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


def read_pack(root: str | Path, split: str = "all", heldout_fraction: float = 0.15) -> list[PackClip]:
    """The word clips of the pack at ``root``.

    Args:
        split: ``training`` (speakers not held out), ``heldout`` or ``all``.
        heldout_fraction: share of the speakers held out.

    Raises:
        DataError: no ``clips.csv``, a malformed one, or an unknown split.
    """
    if split not in ("training", "heldout", "all"):
        raise DataError(f"unknown split {split!r}; choose training, heldout or all")
    root = Path(root)
    table = root / CLIPS_CSV
    if not table.is_file():
        raise DataError(f"{root}: not a real-speech pack (no {CLIPS_CSV})")
    with table.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    clips = []
    for row in rows:
        if not row["word"] or row["context"] not in WORD_CONTEXTS:
            continue
        if split != "all" and heldout_speaker(row["speaker"], heldout_fraction) != (split == "heldout"):
            continue
        clips.append(PackClip(root / row["path"], row["word"].lower(), row["speaker"], row["source"], row["context"]))
    return clips


def noise_files(root: str | Path) -> list[Path]:
    """The pack's recorded background-noise files."""
    return sorted((Path(root) / "noise").glob("*.ogg"))
