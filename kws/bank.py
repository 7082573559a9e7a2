"""KeywordBank: the enrolled keywords of one model, stored as versioned JSON.

A bank holds, for each keyword, its center(s) in embedding space, its
detection threshold, how many clips made it, the enrolment clips' embeddings
(``positives``) and the history of feedback (:mod:`kws.feedback`), plus the
identity of the model whose embeddings these are. A bank refuses to be used
with another model: embeddings of different models are not comparable.

Each feedback entry adds a positive or a negative clip (every window of it that
could fire the keyword) and remembers the keyword as it was before, so that it
can be undone exactly; the negatives are the windows of the negative entries.
Files of the older versions (:data:`READABLE_VERSIONS`) load too: version 1 has
no positives or history, version 2 one window per entry.

A keyword longer than the model's window has a window of its own, in stem frames
(``frames``, written only for such a keyword: a model over a stem embeds, enrols and
streams it at that window, see :meth:`kws.embedder.Embedder.at_frames`); every other
keyword, and every keyword of an older file, uses the model's own window.
"""

from __future__ import annotations

import json
import math
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kws.errors import BankError
from kws.fileio import file_lock, write_json

__all__ = [
    "BANK_FORMAT", "BANK_VERSION", "CONFUSABLE_SOURCE", "DEFAULT_NEGATIVE_RULE", "Entry", "Keyword", "KeywordBank", "NEGATIVE_RULES",
    "MAX_WINDOW_FRAMES", "READABLE_VERSIONS", "SUPPRESSED_SCORE", "UNIT_NORM_TOLERANCE", "apply_negatives",
    "keyword_name", "locked_bank",
]

BANK_FORMAT = "kws-bank"
BANK_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# How a keyword's negatives act (see :func:`apply_negatives`): "suppress" zeroes
# out windows closer to a negative than to the keyword; "raise" leaves scores
# alone (feedback raises the threshold above the negatives' scores instead).
NEGATIVE_RULES = ("suppress", "raise")
DEFAULT_NEGATIVE_RULE = "suppress"
# Score of a suppressed window: the lowest cosine, so that it can never fire.
SUPPRESSED_SCORE = -1.0
# Source of the negative entries enrolment adds for a keyword's confusable words (kws.confusables).
CONFUSABLE_SOURCE = "confusable: "


# The longest window a keyword may have, in stem frames of 80 ms (3.3 s): above what enrolment
# gives any keyword (kws.enroll.EnrollConfig.max_speech_s), so a larger value was edited by hand.
MAX_WINDOW_FRAMES = 40

# Stored vectors are rounded to 7 digits; a norm further from 1 than this was edited by hand.
UNIT_NORM_TOLERANCE = 1e-3


def keyword_name(name: str) -> str:
    """A keyword name as kws stores and looks it up: Unicode NFC, no surrounding
    whitespace, inner runs of spaces made one space.

    ``"lights "`` and ``"lights"`` are thus one keyword, not two that look alike in
    ``kws bank list``. Raises :class:`BankError` for an empty name and for control
    or invisible format characters (a newline would break every text output).
    """
    if not isinstance(name, str):
        raise BankError(f"a keyword name must be text, got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name).strip()
    bad = sorted({c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp")})
    if bad:
        shown = ", ".join(f"U+{ord(c):04X}" for c in bad)
        raise BankError(f"keyword name {name!r} contains control or invisible characters ({shown}); use plain text")
    text = " ".join(text.split())
    if not text:
        raise BankError("a keyword name cannot be empty")
    return text


def _unit_rows(a: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(a, axis=1) - 1) <= UNIT_NORM_TOLERANCE))


def _vec_json(v: np.ndarray) -> list[float]:
    return [round(float(x), 7) for x in v]


def apply_negatives(
    scores: np.ndarray, negative_sims: np.ndarray | None, positive_sims: np.ndarray | None = None
) -> np.ndarray:
    """Suppress the scores of windows closer to a negative example than to the keyword.

    A window is the keyword's if its best match is the keyword's center or one of
    its own clips (``positive_sims``): a negative then suppresses only what is
    nearer to it than to anything the user said was the keyword, so one enrolment
    clip that happens to lie near a negative keeps its neighbourhood.

    Args:
        scores: ``(batch,)`` cosine of each window to the keyword (best center).
        negative_sims: ``(batch,)`` cosine of each window to its nearest negative, or ``None``.
        positive_sims: ``(batch,)`` cosine of each window to its nearest positive clip, or ``None``.
    Returns:
        ``(batch,)`` scores, :data:`SUPPRESSED_SCORE` where the nearest negative wins.
    """
    if negative_sims is None:
        return scores
    guard = scores if positive_sims is None else np.maximum(scores, positive_sims)
    return np.where(negative_sims > guard, np.float32(SUPPRESSED_SCORE), scores).astype(np.float32)


@dataclass
class Entry:
    """One feedback change to a keyword.

    Attributes:
        id: number of the entry within its keyword (1, 2, ...).
        kind: ``"negative"`` (not the keyword) or ``"positive"`` (the keyword).
        source: name of the clip it came from.
        added: when, ISO 8601 UTC.
        embeddings: ``(n, dim)`` unit-norm embeddings of the windows of the clip it
            added: first the window that fired (or scored best), then, for a
            negative, the clip's other windows that could fire the keyword.
        before: the keyword's ``centers``/``threshold``/``samples``/``info``/
            ``negative_rule`` as stored just before this entry (JSON data), to undo it exactly.
    """

    id: int
    kind: str
    source: str
    added: str
    embeddings: np.ndarray
    before: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "added": self.added,
            "embeddings": [_vec_json(v) for v in self.embeddings],
            "before": self.before,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], dim: int) -> "Entry":
        entry = cls(
            id=int(d["id"]),
            kind=str(d["kind"]),
            source=str(d["source"]),
            added=str(d["added"]),
            # A version-2 entry holds its one window as "embedding".
            embeddings=np.asarray(d["embeddings"] if "embeddings" in d else [d["embedding"]], dtype=np.float32),
            before=dict(d["before"]),
        )
        if entry.kind not in ("negative", "positive"):
            raise ValueError(f"entry {entry.id} has kind {entry.kind!r}, expected 'negative' or 'positive'")
        shape = entry.embeddings.shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] != dim:
            raise ValueError(f"entry {entry.id}: embeddings have shape {shape}, expected (n, {dim})")
        if not np.all(np.isfinite(entry.embeddings)):
            raise ValueError(f"entry {entry.id}: embeddings are not finite numbers")
        if not {"centers", "threshold", "samples", "info"} <= set(entry.before):
            raise ValueError(f"entry {entry.id}: 'before' lacks the keyword's earlier state")
        return entry


@dataclass
class Keyword:
    """One enrolled keyword.

    Attributes:
        name: the keyword as the user named it.
        centers: ``(n_centers, dim)`` unit-norm float32.
        threshold: cosine score at or above which the keyword fires.
        samples: number of clips (enrolment clips plus positive feedback).
        info: free-form calibration details (plain JSON data).
        positives: ``(n_clips, dim)`` unit-norm embeddings of the enrolment
            clips (each clip's own, without augmented copies); ``None`` for
            keywords from version-1 banks.
        history: feedback entries, oldest first.
        negative_rule: how negatives act on scores, one of :data:`NEGATIVE_RULES`.
        frames: the keyword's own window in stem frames, for a keyword longer than the
            model's window; ``None``: the model's window. Its embeddings (centers,
            positives, feedback) are all at this window.
        spoken: ``(dim,)`` what synthetic voices saying the keyword add to each center
            (:mod:`kws.spoken`), kept so that feedback re-makes the centers as enrolment
            made them; ``None``: enrolled from its clips alone.
    """

    name: str
    centers: np.ndarray
    threshold: float
    samples: int
    info: dict[str, Any] = field(default_factory=dict)
    positives: np.ndarray | None = None
    history: list[Entry] = field(default_factory=list)
    negative_rule: str = DEFAULT_NEGATIVE_RULE
    frames: int | None = None
    spoken: np.ndarray | None = None

    @property
    def negatives(self) -> np.ndarray | None:
        """``(n_windows, dim)`` embeddings of the negative entries' windows, or ``None`` if there are none."""
        neg = [e.embeddings for e in self.history if e.kind == "negative"]
        return np.concatenate(neg) if neg else None

    @property
    def feedback_negatives(self) -> np.ndarray | None:
        """:attr:`negatives` less the confusable words enrolment added (:data:`CONFUSABLE_SOURCE`)."""
        neg = [e.embeddings for e in self.history if e.kind == "negative" and not e.source.startswith(CONFUSABLE_SOURCE)]
        return np.concatenate(neg) if neg else None

    @property
    def all_positives(self) -> np.ndarray | None:
        """``(n, dim)``: enrolment positives then positive entries (``None`` without enrolment positives)."""
        if self.positives is None:
            return None
        extra = [e.embeddings for e in self.history if e.kind == "positive"]
        return np.concatenate([self.positives, *extra]) if extra else self.positives

    def score(self, embeddings: np.ndarray, feedback_only: bool = False) -> np.ndarray:
        """``(batch,)`` score of ``(batch, dim)`` unit-norm embeddings: best center, negatives applied
        (``feedback_only``: only the :attr:`feedback_negatives`)."""
        scores = (embeddings @ self.centers.T).max(axis=1).astype(np.float32)
        negatives = self.feedback_negatives if feedback_only else self.negatives
        if self.negative_rule != "suppress" or negatives is None:
            return scores
        positives = self.all_positives
        positive_sims = None if positives is None else (embeddings @ positives.T).max(axis=1)
        return apply_negatives(scores, (embeddings @ negatives.T).max(axis=1), positive_sims)

    def state_json(self) -> dict[str, Any]:
        """The parts of the keyword that feedback changes, as JSON data."""
        return {
            "centers": [_vec_json(c) for c in self.centers],
            "threshold": float(self.threshold),
            "samples": int(self.samples),
            "info": self.info,
            "negative_rule": self.negative_rule,
        }

    def to_json(self) -> dict[str, Any]:
        # Only a keyword with a window of its own (or spoken voices) says so: others are stored as before.
        window = {} if self.frames is None else {"frames": self.frames}
        spoken = {} if self.spoken is None else {"spoken": _vec_json(self.spoken)}
        return {
            **self.state_json(),
            **window,
            **spoken,
            "positives": None if self.positives is None else [_vec_json(p) for p in self.positives],
            "history": [e.to_json() for e in self.history],
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any], dim: int) -> "Keyword":
        try:
            centers = np.asarray(d["centers"], dtype=np.float32)
            threshold = float(d["threshold"])
            samples = int(d["samples"])
            info = dict(d.get("info", {}))
            rule = str(d.get("negative_rule", DEFAULT_NEGATIVE_RULE))
            raw_pos = d.get("positives")
            positives = None if raw_pos is None else np.asarray(raw_pos, dtype=np.float32)
            history = [Entry.from_json(e, dim) for e in d.get("history", [])]
            frames = d.get("frames")
            raw_spoken = d.get("spoken")
            spoken = None if raw_spoken is None else np.asarray(raw_spoken, dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BankError(f"keyword {name!r} is malformed ({exc})") from exc
        if centers.ndim != 2 or centers.shape[0] == 0 or centers.shape[1] != dim:
            raise BankError(f"keyword {name!r}: centers have shape {centers.shape}, expected (n, {dim})")
        if not np.all(np.isfinite(centers)) or not math.isfinite(threshold):
            raise BankError(f"keyword {name!r}: centers or threshold are not finite numbers")
        if not -1.0 <= threshold <= 1.0:
            raise BankError(
                f"keyword {name!r}: threshold {threshold:g} is outside [-1, 1], the range of cosine scores "
                f"(it would {'never fire' if threshold > 1 else 'fire on any sound'}); re-enrol the keyword"
            )
        if not _unit_rows(centers):
            raise BankError(f"keyword {name!r}: centers are not unit-length vectors; re-enrol the keyword")
        if samples < 1:
            raise BankError(f"keyword {name!r}: samples is {samples}, expected at least 1")
        if positives is not None:
            if positives.ndim != 2 or positives.shape[1] != dim:
                raise BankError(f"keyword {name!r}: positives have shape {positives.shape}, expected (n, {dim})")
            if not np.all(np.isfinite(positives)) or not _unit_rows(positives):
                raise BankError(f"keyword {name!r}: positives are not finite unit-length vectors")
        if spoken is not None and (spoken.shape != (dim,) or not np.all(np.isfinite(spoken))):
            raise BankError(f"keyword {name!r}: spoken has shape {spoken.shape}, expected ({dim},) finite numbers")
        if rule not in NEGATIVE_RULES:
            raise BankError(f"keyword {name!r}: negative_rule {rule!r} is not one of {', '.join(NEGATIVE_RULES)}")
        if len({e.id for e in history}) != len(history):
            raise BankError(f"keyword {name!r}: feedback entries have duplicate ids")
        if frames is not None and (type(frames) is not int or not 1 <= frames <= MAX_WINDOW_FRAMES):
            raise BankError(
                f"keyword {name!r}: its window, frames={frames!r}, is not a whole number of stem frames from 1 to "
                f"{MAX_WINDOW_FRAMES}; re-enrol the keyword (or delete the field to use the model's window)"
            )
        return cls(
            name=name, centers=centers, threshold=threshold, samples=samples, info=info,
            positives=positives, history=history, negative_rule=rule, frames=frames, spoken=spoken,
        )


class KeywordBank:
    """The keywords enrolled with one model (identified by ``model_id``)."""

    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self.keywords: dict[str, Keyword] = {}

    @property
    def names(self) -> list[str]:
        """Keyword names, in the order of :meth:`score`'s columns."""
        return list(self.keywords)

    @property
    def thresholds(self) -> np.ndarray:
        """``(n_keywords,)`` thresholds in :attr:`names` order."""
        return np.array([k.threshold for k in self.keywords.values()], dtype=np.float32)

    @property
    def windows(self) -> list[int | None]:
        """The distinct windows of the keywords (stem frames, ``None``: the model's own), the model's
        first if any keyword uses it: the windows a stream embeds every hop for :meth:`score`."""
        frames = {k.frames for k in self.keywords.values()}
        return ([None] if None in frames else []) + sorted(f for f in frames if f is not None)

    def __len__(self) -> int:
        return len(self.keywords)

    def __contains__(self, name: str) -> bool:
        try:
            return keyword_name(name) in self.keywords
        except BankError:
            return False

    def __getitem__(self, name: str) -> Keyword:
        key = keyword_name(name)
        if key not in self.keywords:
            known = ", ".join(self.names) or "none"
            raise BankError(f"no keyword {name!r} in the bank (enrolled: {known})")
        return self.keywords[key]

    def add(self, keyword: Keyword, replace: bool = False) -> None:
        keyword.name = keyword_name(keyword.name)
        if keyword.name in self.keywords and not replace:
            raise BankError(f"keyword {keyword.name!r} is already enrolled; remove it first or replace it")
        if keyword.centers.shape[1] != self.dim:
            raise BankError(f"keyword {keyword.name!r} has dimension {keyword.centers.shape[1]}, bank has {self.dim}")
        self.keywords[keyword.name] = keyword

    def remove(self, name: str) -> Keyword:
        return self.keywords.pop(self[name].name)

    def rename(self, old: str, new: str) -> None:
        """Rename a keyword in place (it keeps its position in :attr:`names`)."""
        kw, new = self[old], keyword_name(new)
        old = kw.name
        if new in self.keywords:
            raise BankError(f"keyword {new!r} already exists")
        kw.name = new
        self.keywords = {(new if n == old else n): kw for n, kw in self.keywords.items()}

    def check_model(self, model_id: str) -> None:
        """Raise :class:`BankError` unless the bank was made by the model ``model_id``."""
        if model_id != self.model_id:
            raise BankError(
                f"this bank was made with model {self.model_id}, but the loaded model is {model_id}; "
                "embeddings of different models are not comparable: re-enrol the keywords with this "
                "model, or load the model the bank was made with"
            )

    def score(self, embeddings: np.ndarray, windows: list[int | None] | None = None) -> np.ndarray:
        """Cosine score of each embedding to each keyword (best of its centers, negatives applied).

        Args:
            embeddings: ``(batch, dim)`` unit-norm, every keyword scored on them; or
                ``(batch, n_windows, dim)``, one embedding per window, each keyword scored on
                the one at its own window.
            windows: the window of each of ``embeddings``' ``n_windows`` (stem frames, ``None``:
                the model's); default :attr:`windows`.
        Returns:
            ``(batch, n_keywords)`` float32, columns in :attr:`names` order.
        """
        if not self.keywords:
            return np.zeros((len(embeddings), 0), dtype=np.float32)
        if embeddings.ndim == 3:
            windows = self.windows if windows is None else list(windows)
            if embeddings.shape[1] != len(windows):
                raise BankError(f"{embeddings.shape[1]} windows embedded, {len(windows)} windows named")
            missing = [f"{k.name!r}" for k in self.keywords.values() if k.frames not in windows]
            if missing:
                raise BankError(f"keyword(s) {', '.join(missing)} not embedded at their window (embedded at {windows})")
            cols = [k.score(embeddings[:, windows.index(k.frames)]) for k in self.keywords.values()]
        else:
            own = [f"{k.name!r} ({k.frames} frames)" for k in self.keywords.values() if k.frames is not None]
            if own:
                raise BankError(
                    f"keyword(s) {', '.join(own)} have a window of their own and cannot be scored on embeddings at "
                    "the model's window; embed at each keyword's window (KeywordBank.windows)"
                )
            cols = [k.score(embeddings) for k in self.keywords.values()]
        return np.stack(cols, axis=1).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BANK_FORMAT,
            "version": BANK_VERSION,
            "model_id": self.model_id,
            "dim": self.dim,
            "keywords": {name: kw.to_json() for name, kw in self.keywords.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the bank atomically: an existing file is replaced only by a complete one."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None) -> "KeywordBank":
        """Read a bank; with ``model_id``, also check that it belongs to that model."""
        path = Path(path)
        if not path.is_file():
            raise BankError(f"{path}: bank file not found (create one with `kws enroll`)")
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BankError(f"{path}: not a valid bank file (corrupt or truncated JSON: {exc})") from exc
        except RecursionError as exc:
            raise BankError(f"{path}: not a valid bank file (JSON nested too deeply)") from exc
        if not isinstance(d, dict) or d.get("format") != BANK_FORMAT:
            raise BankError(f"{path}: not a kws keyword bank")
        if d.get("version") not in READABLE_VERSIONS:
            raise BankError(
                f"{path}: bank version {d.get('version')} is not supported (expected one of "
                f"{', '.join(map(str, READABLE_VERSIONS))}); update kws"
            )
        try:
            bank = cls(model_id=str(d["model_id"]), dim=int(d["dim"]))
            for raw_name, kw in dict(d["keywords"]).items():
                name = keyword_name(raw_name)
                if name in bank.keywords:
                    raise BankError(f"keywords {raw_name!r} and {name!r} are one name once spaces are tidied; "
                                    "rename one of them in the file")
                bank.keywords[name] = Keyword.from_json(name, kw, bank.dim)
        except BankError as exc:
            raise BankError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BankError(f"{path}: malformed bank ({exc})") from exc
        if model_id is not None:
            try:
                bank.check_model(model_id)
            except BankError as exc:
                raise BankError(f"{path}: {exc}") from exc
        return bank


@contextmanager
def locked_bank(path: str | Path, model_id: str | None = None, dim: int | None = None) -> Iterator[KeywordBank]:
    """Read a bank file, let the caller change it, and save it, all under the file's lock.

    Every read-modify-write of a bank goes through here, so that two processes
    changing one bank (two ``kws enroll`` runs, feedback during an enrolment, the
    server) wait for each other instead of one silently undoing the other. The
    bank is saved only when the block ends without an exception.

    Args:
        model_id: the model the bank must belong to (``None``: any).
        dim: if given and ``path`` does not exist, start a new empty bank of
            model ``model_id`` with this dimension.
    """
    path = Path(path)
    with file_lock(path):
        if dim is not None and not path.exists():
            if model_id is None:
                raise BankError("a new bank needs the model id of its embeddings")
            bank = KeywordBank(model_id, dim)
        else:
            bank = KeywordBank.load(path, model_id=model_id)
        yield bank
        bank.save(path)
