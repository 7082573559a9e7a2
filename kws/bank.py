"""KeywordBank: the enrolled keywords of one model, stored as versioned JSON.

A bank holds, for each keyword, its center(s) in embedding space, its
detection threshold and how many clips made it, plus the identity of the model
whose embeddings these are. A bank refuses to be used with another model:
embeddings of different models are not comparable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kws.errors import BankError
from kws.fileio import write_json

BANK_FORMAT = "kws-bank"
BANK_VERSION = 1


@dataclass
class Keyword:
    """One enrolled keyword.

    Attributes:
        name: the keyword as the user named it.
        centers: ``(n_centers, dim)`` unit-norm float32.
        threshold: cosine score at or above which the keyword fires.
        samples: number of enrolment clips.
        info: free-form calibration details (plain JSON data).
    """

    name: str
    centers: np.ndarray
    threshold: float
    samples: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "centers": [[round(float(v), 7) for v in c] for c in self.centers],
            "threshold": float(self.threshold),
            "samples": int(self.samples),
            "info": self.info,
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any], dim: int) -> "Keyword":
        try:
            centers = np.asarray(d["centers"], dtype=np.float32)
            threshold = float(d["threshold"])
            samples = int(d["samples"])
            info = dict(d.get("info", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise BankError(f"keyword {name!r} is malformed ({exc})") from exc
        if centers.ndim != 2 or centers.shape[0] == 0 or centers.shape[1] != dim:
            raise BankError(f"keyword {name!r}: centers have shape {centers.shape}, expected (n, {dim})")
        if not np.all(np.isfinite(centers)) or not math.isfinite(threshold):
            raise BankError(f"keyword {name!r}: centers or threshold are not finite numbers")
        return cls(name=name, centers=centers, threshold=threshold, samples=samples, info=info)


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

    def __len__(self) -> int:
        return len(self.keywords)

    def __contains__(self, name: str) -> bool:
        return name in self.keywords

    def __getitem__(self, name: str) -> Keyword:
        if name not in self.keywords:
            known = ", ".join(self.names) or "none"
            raise BankError(f"no keyword {name!r} in the bank (enrolled: {known})")
        return self.keywords[name]

    def add(self, keyword: Keyword, replace: bool = False) -> None:
        if not keyword.name.strip():
            raise BankError("a keyword name cannot be empty")
        if keyword.name in self.keywords and not replace:
            raise BankError(f"keyword {keyword.name!r} is already enrolled; remove it first or replace it")
        if keyword.centers.shape[1] != self.dim:
            raise BankError(f"keyword {keyword.name!r} has dimension {keyword.centers.shape[1]}, bank has {self.dim}")
        self.keywords[keyword.name] = keyword

    def remove(self, name: str) -> Keyword:
        return self.keywords.pop(self[name].name)

    def rename(self, old: str, new: str) -> None:
        """Rename a keyword in place (it keeps its position in :attr:`names`)."""
        if not new.strip():
            raise BankError("a keyword name cannot be empty")
        if new in self.keywords:
            raise BankError(f"keyword {new!r} already exists")
        self[old].name = new
        self.keywords = {(new if n == old else n): kw for n, kw in self.keywords.items()}

    def check_model(self, model_id: str) -> None:
        """Raise :class:`BankError` unless the bank was made by the model ``model_id``."""
        if model_id != self.model_id:
            raise BankError(
                f"this bank was made with model {self.model_id}, but the loaded model is {model_id}; "
                "embeddings of different models are not comparable: re-enrol the keywords with this "
                "model, or load the model the bank was made with"
            )

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine score of each embedding to each keyword (best of its centers).

        Args:
            embeddings: ``(batch, dim)`` unit-norm.
        Returns:
            ``(batch, n_keywords)`` float32, columns in :attr:`names` order.
        """
        if not self.keywords:
            return np.zeros((len(embeddings), 0), dtype=np.float32)
        cols = [(embeddings @ k.centers.T).max(axis=1) for k in self.keywords.values()]
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
        if not isinstance(d, dict) or d.get("format") != BANK_FORMAT:
            raise BankError(f"{path}: not a kws keyword bank")
        if d.get("version") != BANK_VERSION:
            raise BankError(f"{path}: bank version {d.get('version')} is not supported (expected {BANK_VERSION})")
        try:
            bank = cls(model_id=str(d["model_id"]), dim=int(d["dim"]))
            for name, kw in dict(d["keywords"]).items():
                bank.keywords[name] = Keyword.from_json(name, kw, bank.dim)
        except BankError as exc:
            raise BankError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise BankError(f"{path}: malformed bank ({exc})") from exc
        if model_id is not None:
            try:
                bank.check_model(model_id)
            except BankError as exc:
                raise BankError(f"{path}: {exc}") from exc
        return bank
