"""The one-object API: enrol keywords, detect them in audio, and correct its mistakes.

:class:`Spotter` holds an embedder, a keyword bank and the detector settings, and
calls the modules that do the work (:mod:`kws.enroll`, :mod:`kws.detect`,
:mod:`kws.feedback`, :mod:`kws.sources`) with them::

    import kws

    spotter = kws.Spotter()                          # the bundled model, an empty bank
    spotter.enroll("lights", ["a.wav", "b.wav", "c.wav"])
    for event in spotter.detect("recording.wav"):    # or None: the microphone
        print(event.keyword, event.score, event.time)
    spotter.save("my.json")                          # kws.Spotter(bank="my.json") reads it back
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from kws.bank import KeywordBank, keyword_name
from kws.detect import DetectorConfig
from kws.embedder import Embedder, load_embedder
from kws.enroll import EnrollResult
from kws.events import Event
from kws.feedback import FeedbackResult

__all__ = ["Spotter", "Clip", "Source"]

log = logging.getLogger(__name__)

# An audio clip: a file path, or 16 kHz mono float32 samples ``(samples,)``.
Clip = Union[str, os.PathLike, np.ndarray]
# Audio to detect in: a file path, an iterable of 16 kHz mono float32 chunks, or None (the microphone).
Source = Union[str, os.PathLike, Iterable[np.ndarray], None]


class Spotter:
    """Few-shot keyword spotting in one object.

    Args:
        model: a checkpoint (``.pt``), an exported ``.onnx`` file, a bundled model's
            name, or ``None`` for the bundled default (see :func:`kws.load_embedder`).
        bank: a keyword bank file to start from (it must belong to ``model``), a
            :class:`~kws.bank.KeywordBank`, or ``None`` for an empty bank.
        detector: the streaming settings (hop, smoothing, refractory time, threshold
            offset, energy gate); ``None``: the defaults, with the model's own stream offset.
        backend, threads: passed to :func:`kws.load_embedder` (``None``: ONNX Runtime
            for the bundled model, as the CLI does for a few clips).
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        bank: str | os.PathLike | KeywordBank | None = None,
        detector: DetectorConfig | None = None,
        backend: str | None = None,
        threads: int | None = None,
    ) -> None:
        backend = backend or ("onnx" if model is None else None)
        self.embedder: Embedder = load_embedder(model, backend=backend, threads=threads)
        if bank is None:
            self.bank = KeywordBank(self.embedder.model_id, self.embedder.dim)
        elif isinstance(bank, KeywordBank):
            bank.check_model(self.embedder.model_id)
            self.bank = bank
        else:
            self.bank = KeywordBank.load(bank, model_id=self.embedder.model_id)
        detector = (detector or DetectorConfig()).for_model(self.embedder)
        detector.validate()
        self.detector = detector

    @property
    def keywords(self) -> list[str]:
        """The enrolled keywords' names."""
        return self.bank.names

    def enroll(self, name: str, clips: Sequence[Clip], replace: bool = False, **options) -> EnrollResult:
        """Enrol keyword ``name`` from 1-10 clips and add it to the bank.

        ``options`` go to :func:`kws.enroll.enroll` (``impostors``, ``target_far``,
        ``centers``, ``augment``, ``force`` …); ``spoken`` is :data:`kws.spoken.SPOKEN_DEFAULT`
        unless given (``spoken=None``: the clips alone). Raises
        :class:`~kws.errors.EnrollmentError` for clips that cannot make a keyword,
        or a ``name`` already enrolled unless ``replace``.
        """
        from kws.enroll import enroll
        from kws.errors import EnrollmentError
        from kws.spoken import SPOKEN_DEFAULT

        options.setdefault("spoken", SPOKEN_DEFAULT)
        name = keyword_name(name)
        if name in self.bank and not replace:
            raise EnrollmentError(f"{name!r} is already enrolled; pass replace=True to enrol it again")
        audio = [self._audio(c) for c in clips]
        names = [str(c) if not isinstance(c, np.ndarray) else f"clip {i + 1}" for i, c in enumerate(clips)]
        result = enroll(self.embedder, name, audio, bank=self.bank, clip_names=names, **options)
        self.bank.add(result.keyword, replace=replace)
        return result

    def detect(self, source: Source = None, callback: Callable[[Event], None] | None = None) -> Iterator[Event]:
        """Yield an :class:`~kws.events.Event` each time an enrolled keyword is heard in ``source``.

        ``source``: an audio file, an iterable of 16 kHz mono float32 chunks ``(samples,)``
        (any length each), or ``None`` for the default microphone (stop with Ctrl-C or by
        leaving the loop). ``callback``, if given, is called with each event as it fires.
        """
        from kws.detect import detect_stream
        from kws.sources import MicrophoneSource, file_source

        if source is None:
            chunks: Iterable[np.ndarray] = MicrophoneSource()
        elif isinstance(source, (str, os.PathLike)):
            chunks = file_source(source)
        else:
            chunks = source
        return detect_stream(self.embedder, self.bank, chunks, self.detector, callback)

    def feedback(self, name: str, clip: Clip, correct: bool = False, **options) -> FeedbackResult:
        """Learn from a mistake on keyword ``name``, in the bank, without retraining.

        ``correct=False`` (a false alarm): ``clip`` was not the keyword, and windows like
        it will not fire it again. ``correct=True`` (a miss or a weak detection): ``clip``
        was the keyword, and joins its examples. ``clip`` may be an event clip saved by
        ``kws detect --save-events`` (its sidecar says which window fired). ``options`` go
        to :func:`kws.feedback.add_negative` / :func:`~kws.feedback.add_positive`.
        """
        from kws.feedback import add_negative, add_positive

        clip = clip if isinstance(clip, np.ndarray) else Path(clip)
        learn = add_positive if correct else add_negative
        return learn(self.embedder, self.bank, keyword_name(name), clip, **options)

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to ``path`` atomically (read it back with ``Spotter(bank=path)``)."""
        self.bank.save(path)

    def _audio(self, clip: Clip) -> np.ndarray:
        from kws.audio import load_audio

        return np.asarray(clip, dtype=np.float32) if isinstance(clip, np.ndarray) else load_audio(clip)
