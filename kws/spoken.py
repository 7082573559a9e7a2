"""A keyword as speech engines say it: synthetic voices added to the user's clips.

Three recordings of one person are a noisy estimate of how a word sounds to the
model; the speech engines installed here can say the word in many voices. Each
*source* of voices gives one unit center of the keyword: espeak-ng's voices, and
the other engines' voices (SVOX Pico and RHVoice) together, as the synthetic
corpora the default model learnt from are split. The synthetic centers of all words
share a direction (the voices are synthetic), which does not change which word is
nearest but moves every score: each source's center is taken less the mean of other
words (the impostor set's). The keyword's *spoken vector* is ``weight`` times the
sum of what is left; each center of the keyword is its clips' unit center plus that
vector, renormalised (:func:`kws.metrics.with_spoken`). MBROLA and Piper voices are
left out (:data:`OTHER_ENGINES`).

The weight was chosen on one half of the real Speech Commands speakers and
reported on the other (``kws eval … --spoken``; the speech-embedding recipe README).
It helps where a keyword must be heard from people who did not enrol it; on the
enroller's own voice it can cost recall at the model's stream offset, since the voices
pull the center away from that speaker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from kws.audio import TRIM_DB, centre_speech
from kws.embedder import Embedder
from kws.errors import EnrollmentError
from kws.metrics import normalize
from kws.phonemes import speakable

log = logging.getLogger(__name__)

__all__ = ["SpokenConfig", "spoken_centers", "spoken_sources", "spoken_vector"]

# The engines other than espeak-ng that may speak a keyword. Not MBROLA (its licence bars products
# that are sold), nor Piper (it samples its voice anew each time: one keyword enrolled twice from
# the same clips would differ).
OTHER_ENGINES = ("pico", "rhvoice")


@dataclass(frozen=True)
class SpokenConfig:
    """How a keyword is spoken by synthetic voices.

    Attributes:
        voices: synthetic speakers per source (each an engine voice with its own speed and pitch).
        weight: of each source's center less the other words' mean, against 1 for the clips' unit center
            (chosen on the choose half).
        seed: which speakers (:func:`kws.data.synth.make_speakers`); not the synthetic corpora's
            seed (0), so that an evaluation on a corpus's testing voices never hears those voices.
        required: refuse a keyword the engines cannot say (text they cannot read as words, no
            engine installed); otherwise it is enrolled from its clips alone, with a warning.
    """

    voices: int = 16
    weight: float = 0.5
    seed: int = 1
    required: bool = False

    def validate(self) -> None:
        if not 1 <= self.voices <= 64:
            raise EnrollmentError(f"spoken voices per source must be between 1 and 64, got {self.voices}")
        if not 0 < self.weight <= 4:
            raise EnrollmentError(f"the spoken sources' weight must be in (0, 4], got {self.weight}")


# How kws enroll, Spotter.enroll, kws serve's page and kws demo enrol unless told otherwise: across
# real speakers the voices lift 10-way 3-shot accuracy by 5.5 points and, with running speech among
# the impostors, cost a person's own keywords 2 points at the model's stream offset
# (recipes/speech_embedding/README.md, "The keyword as speech engines say it").
SPOKEN_DEFAULT = SpokenConfig()


def spoken_sources() -> dict[str, tuple[str, ...]]:
    """The sources of voices installed here → their engines: ``espeak-ng`` and, if any of
    :data:`OTHER_ENGINES` is installed, ``other engines``."""
    from kws.data.synth import installed_engines

    found = installed_engines()
    sources = {"espeak-ng": ("espeak-ng",)} if "espeak-ng" in found else {}
    others = tuple(e for e in OTHER_ENGINES if e in found)
    if others:
        sources["other engines"] = others
    return sources


def spoken_centers(
    embedder: Embedder, text: str, config: SpokenConfig = SpokenConfig(), trim_db: float = TRIM_DB
) -> tuple[np.ndarray, list[str]]:
    """``text`` spoken by each source's voices: unit centers ``(n_sources, D)`` and the sources' names.

    Each voice says it within ``embedder``'s window (faster if it must: a long keyword's
    embedder is at its own window, :meth:`kws.embedder.Embedder.at_frames`), centred as
    enrolment centres its clips (``trim_db``). A voice whose engine fails is left out (logged); a source with no
    voice left is dropped. Raises :class:`EnrollmentError` for text the engines cannot
    read as words, and when no engine is installed or none could say it.
    """
    from kws.data.synth import make_speakers, speak_many

    config.validate()
    if not speakable(text):
        raise EnrollmentError(
            f"{text!r} cannot be spoken by the speech engines: give the keyword's words in plain letters "
            "(spaces, apostrophes and hyphens between them), e.g. --say 'hey computer'"
        )
    sources = spoken_sources()
    if not sources:
        raise EnrollmentError("no speech engine is installed to speak the keyword: install espeak-ng (apt)")
    centers, names = [], []
    for name, engines in sources.items():
        # Fewer voices than engines: the first engines only (each engine needs a voice of its own).
        speakers = make_speakers(config.voices, config.seed, engines=engines[: config.voices])
        said = speak_many([(text, s) for s in speakers], samples=embedder.window_samples, skip_failed=True)
        clips = [c for c in said if c is not None]
        if not clips:
            log.warning("no %s voice could say %r", name, text)
            continue
        windows = np.stack([centre_speech(c, embedder.window_samples, db=trim_db) for c in clips])
        centers.append(normalize(normalize(embedder(windows)).mean(axis=0)))
        names.append(name)
        log.debug("%r spoken by %d %s voices", text, len(clips), name)
    if not centers:
        raise EnrollmentError(f"no installed speech engine could say {text!r}")
    return np.stack(centers).astype(np.float32), names


def spoken_vector(
    embedder: Embedder,
    text: str,
    others: np.ndarray,
    config: SpokenConfig = SpokenConfig(),
    trim_db: float = TRIM_DB,
) -> tuple[np.ndarray, list[str]]:
    """``text``'s spoken vector ``(D,)`` and the sources' names: ``config.weight`` times the sum
    over sources of each one's center (:func:`spoken_centers`) less the mean of ``others``.

    ``others`` ``(M, D)`` are embeddings of other words (the impostors the keyword is calibrated
    on): the synthetic centers of all words share a direction, which says nothing of this word
    but draws the keyword toward all synthetic speech; taking their mean out keeps what tells
    this word from others.
    """
    others = np.asarray(others, dtype=np.float32)
    if others.ndim != 2 or others.shape[1] != embedder.dim or len(others) == 0:
        raise EnrollmentError(f"other words' embeddings have shape {others.shape}, expected (M, {embedder.dim})")
    centers, names = spoken_centers(embedder, text, config, trim_db)
    common = normalize(others).mean(axis=0)
    return (config.weight * (centers - common).sum(axis=0)).astype(np.float32), names
