"""Learning from mistakes: false-alarm feedback and re-enrolment, without retraining.

* :func:`add_negative` ("that was not the keyword") stores a clip's embedding as
  a negative example of a keyword; :func:`add_positive` ("that was it") adds a
  further positive and re-makes the keyword's centers. Both re-calibrate the
  threshold with :func:`kws.scoring.recalibrate`, the rule used at enrolment.
* :func:`undo` takes back the latest change exactly (each entry remembers the
  keyword as it was before).

How negatives act is the keyword's ``negative_rule`` (:data:`kws.bank.NEGATIVE_RULES`):
``"suppress"`` (default: a window closer to a negative than to the keyword
cannot fire, see :func:`kws.bank.apply_negatives`) or ``"raise"`` (the threshold
is raised just above the negatives' scores). ``kws bench feedback`` measures both.

A clip stands for its main window (the window that fired, for an event clip:
its sidecar says where the window is; else the clip's best-scoring window). A
negative also keeps the clip's other windows that could fire the keyword: as
the detector's window slides past a word, the word sits at every position in it,
and a negative that holds only the first window that fired lets the same word
fire again a few hops later, when only its tail is in the window (seen on
``kws bench feedback``). Event clips therefore keep a post-roll as long as the
window.
"""

from __future__ import annotations

import dataclasses

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws.audio import centre_speech, load_audio, loudest_rms
from kws.background import keep_budget, load_background
from kws.bank import DEFAULT_NEGATIVE_RULE, NEGATIVE_RULES, Entry, Keyword, KeywordBank
from kws.detect import DetectorConfig
from kws.embedder import Embedder
from kws.enroll import EnrollConfig
from kws.errors import AudioError, BankError, EnrollmentError
from kws.events import read_sidecar
from kws.fileio import timestamp
from kws.impostors import load_impostors, with_running_speech
from kws.metrics import normalize
from kws.scoring import (
    Calibration,
    FeedbackConfig,
    fire_threshold,
    nearest_keyword,
    recalibrate,
    recenter,
    suppressed,
)

log = logging.getLogger(__name__)

__all__ = ["FeedbackResult", "SAME_RECORDING_COS", "add_negative", "add_positive", "clip_windows", "undo"]


# ---------------------------------------------------------------------------- clip → embedding


def _windows(embedder: Embedder, audio: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts ``(n,)`` (samples) and embeddings ``(n, dim)`` of the windows of ``audio`` every ``hop``
    samples, the last one flush with the end (one zero-padded window if ``audio`` is shorter)."""
    w = embedder.window_samples
    if len(audio) <= w:
        return np.zeros(1, dtype=int), embedder(audio[None])
    starts = list(range(0, len(audio) - w + 1, hop))
    if starts[-1] != len(audio) - w:
        starts.append(len(audio) - w)
    return np.asarray(starts), embedder(np.stack([audio[s : s + w] for s in starts]))


def clip_windows(
    embedder: Embedder,
    keyword: Keyword,
    clip: str | Path | np.ndarray,
    further: bool = True,
    detector: DetectorConfig = DetectorConfig(),
) -> tuple[np.ndarray, str]:
    """The embeddings ``(n, dim)`` a clip stands for, and how they were found (for messages).

    Row 0 is the clip's main window: for an event clip (a file with a ``kws-event``
    sidecar) the window that fired, for any other clip (a file or ``(samples,)``
    audio at the embedder's rate) its best-scoring window for ``keyword``. The
    other rows (only with ``further``) are the clip's further windows, one every
    detector hop, whose score for ``keyword`` (its centers, negatives ignored)
    reaches the threshold it fires at: the sidecar's for an event clip, else the
    keyword's threshold plus the detector's offset (the model's own unless ``detector`` sets one).
    Windows are the keyword's own (:attr:`kws.bank.Keyword.frames`).
    """
    _, emb, how, _ = _clip_windows(embedder.at_frames(keyword.frames), keyword, clip, further, detector)
    return emb, how


def _clip_windows(
    embedder: Embedder, keyword: Keyword, clip: str | Path | np.ndarray, further: bool, detector: DetectorConfig
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """:func:`clip_windows`, plus the windows' starts ``(n,)`` (samples) and the clip's audio ``(samples,)``."""
    detector = detector.for_model(embedder)
    if isinstance(clip, np.ndarray):
        audio, side = np.asarray(clip, dtype=np.float32), None
    else:
        audio, side = load_audio(clip, embedder.sample_rate), read_sidecar(clip)
    level = loudest_rms(audio, embedder.sample_rate // 10)
    if level < EnrollConfig.silence_rms:
        name = "the clip" if isinstance(clip, np.ndarray) else str(clip)
        raise EnrollmentError(
            f"{name} is silent (loudest 100 ms at {20 * np.log10(max(level, 1e-10)):.0f} dBFS): it holds "
            "nothing to learn from"
        )
    if side is not None and "hop_ms" in side:
        detector = dataclasses.replace(detector, hop_ms=float(side["hop_ms"]))
    hop = detector.hop_samples(embedder.sample_rate)
    if side is None:
        starts, emb = _windows(embedder, audio, hop)
        scores = (emb @ keyword.centers.T).max(axis=1)
        best = int(np.argmax(scores))
        a, main = starts[best], emb[best : best + 1]
        how = f"best window at {a / embedder.sample_rate:.2f} s"
        fires_at = fire_threshold(keyword.threshold, detector.threshold_offset)
    else:
        a, b = (round(side[k] * embedder.sample_rate) for k in ("window_start_s", "window_end_s"))
        if not 0 <= a < b <= len(audio):
            raise AudioError(f"{clip}: the sidecar's window {a}-{b} lies outside the clip ({len(audio)} samples)")
        main = embedder(audio[a:b][None])
        how = f"the window that fired ({side['window_start_s']:.2f}-{side['window_end_s']:.2f} s)"
        fires_at = float(side.get("threshold", fire_threshold(keyword.threshold, detector.threshold_offset)))
    if not further:
        return np.array([a]), main, how, audio
    if side is not None:  # the clip's other windows are needed only now
        starts, emb = _windows(embedder, audio, hop)
        scores = (emb @ keyword.centers.T).max(axis=1)
    keep = (scores >= fires_at) & (starts != a)
    return np.concatenate([[a], starts[keep]]), np.concatenate([main, emb[keep]]), how, audio


# A window of a clip that, trimmed and centred as enrolment prepares a clip, comes this
# close (cosine) to an enrolment clip's embedding, and closer than any other enrolment
# clip comes to it, holds that very recording. Measured
# with the bundled model on its demo words (3 enrolled per word, put into longer quiet
# audio at random offsets, 10 ms search grid): own recordings 0.993-1.0 (27 cases),
# other speakers' utterances of the same word 0.77-0.98, other words at most 0.88.
SAME_RECORDING_COS = 0.985


def _enrolment_recordings(embedder: Embedder, keyword: Keyword, audio: np.ndarray) -> np.ndarray:
    """Starts ``(k,)`` (samples) of the windows of ``audio`` that hold one of ``keyword``'s own
    enrolment recordings (see :data:`SAME_RECORDING_COS`), searched every 10 ms.

    The detector's windows see a word with its surroundings, enrolment saw it trimmed and
    centred, so the two embeddings differ; each window is therefore prepared as enrolment
    prepares a clip before it is compared.
    """
    if keyword.positives is None:
        return np.zeros(0, dtype=int)
    w, step = embedder.window_samples, embedder.sample_rate // 100
    positives = keyword.positives
    others = positives @ positives.T
    np.fill_diagonal(others, -np.inf)
    level = np.maximum(SAME_RECORDING_COS, others.max(axis=1) if len(positives) > 1 else -np.inf)
    starts = np.arange(0, max(len(audio) - w, 0) + 1, step)
    # Windows that hold the same whole word with quiet around it are the same once trimmed
    # and centred: each distinct view is embedded once.
    views: dict[bytes, list[int]] = {}
    for s in starts:
        views.setdefault(centre_speech(audio[s : s + w], w, db=EnrollConfig.trim_db).tobytes(), []).append(int(s))
    keys = list(views)
    found = []
    for i in range(0, len(keys), embedder.batch_size):
        batch = keys[i : i + embedder.batch_size]
        sims = normalize(embedder(np.stack([np.frombuffer(k, dtype=np.float32) for k in batch]))) @ positives.T
        found += [s for k, hit in zip(batch, (sims >= level).any(axis=1)) if hit for s in views[k]]
    return np.asarray(found, dtype=int)


# ---------------------------------------------------------------------------- feedback


@dataclass
class FeedbackResult:
    """What one feedback call changed.

    Attributes:
        keyword: the keyword's name.
        entry: the history entry added (undo it with :func:`undo`).
        how: how the clip's embedding was found.
        similarity: the clip's cosine to the keyword's centers before the change.
        threshold_before / threshold_after: the keyword's threshold.
        calibration: the new calibration (``expected_far`` on the impostors).
        nearest: the most similar other keyword and its cosine, if any.
    """

    keyword: str
    entry: Entry
    how: str
    similarity: float
    threshold_before: float
    threshold_after: float
    calibration: Calibration
    nearest: tuple[str, float] | None


def _add(
    embedder: Embedder,
    bank: KeywordBank,
    name: str,
    kind: str,
    clip: str | Path | np.ndarray,
    impostors: np.ndarray | None,
    source: str | None,
    config: FeedbackConfig,
) -> FeedbackResult:
    bank.check_model(embedder.model_id)
    kw = bank[name]
    name = kw.name  # as stored (names are tidied: "up " is "up")
    # Its clip's windows are embedded at the keyword's own window, as the detector scores it.
    embedder = embedder.at_frames(kw.frames)
    if config.negative_rule is not None and config.negative_rule not in NEGATIVE_RULES:
        raise EnrollmentError(f"negative rule must be one of {', '.join(NEGATIVE_RULES)}, got {config.negative_rule!r}")
    if kind == "positive" and kw.positives is None:
        raise EnrollmentError(
            f"{name!r} was enrolled with an older kws that did not keep its enrolment clips; "
            "re-enrol it (kws enroll --replace) before adding positives"
        )
    if impostors is None:
        words = load_impostors(embedder, exclude=name)
        impostors = with_running_speech(embedder, words, exclude=name, frames=kw.frames)
    impostors = normalize(np.asarray(impostors, dtype=np.float32))
    starts, emb, how, audio = _clip_windows(embedder, kw, clip, kind == "negative", DetectorConfig())
    emb = normalize(emb).astype(np.float32)
    similarity = float((kw.centers @ emb[0]).max())
    if kind == "negative":
        _, loo, aligned = recenter(kw, config)
        if aligned is not None:
            # The keyword itself, for this bank, is what would silence one of its own clips.
            itself = np.array([suppressed(loo, aligned, e[None]).any() for e in emb])
            why = "nearer to one of its enrolment clips than that clip is to the keyword and the other clips"
        else:  # a bank from before enrolment clips were kept: compare with their typical score
            typical = float(np.median(loo)) if len(loo) else np.inf
            itself = (emb @ kw.centers.T).max(axis=1) >= typical
            why = f"as high as its enrolment clips' typical {typical:.3f}"
        recordings = _enrolment_recordings(embedder, kw, audio)
        if len(recordings):
            # A window sharing most of its audio with a window that holds an enrolment
            # recording is that recording as the detector sees it, shifted: a negative
            # made of it would stop the keyword's own recordings from being detected.
            near = (np.abs(starts[:, None] - recordings[None]) < embedder.window_samples // 2).any(axis=1)
            if near[0] and not itself[0]:
                why = f"it holds one of the enrolment recordings of {name!r}"
            itself |= near
        if itself[0]:
            raise EnrollmentError(
                f"this clip looks like {name!r} itself (similarity {similarity:.3f} to it, {why}); it was not "
                f"added as a negative, since that would stop {name!r} from being detected. If it was a real "
                f"detection, nothing needs fixing; if not, raise the threshold (--threshold-offset) or "
                f"re-enrol {name!r}"
            )
        if itself.any():
            # The main window decides; a further window that looks like the keyword is only left out.
            log.info("%d further window(s) of the clip look like %r itself: not kept", int(itself.sum()), name)
            emb = emb[~itself]
        if len(emb) > 1:
            how += f" and {len(emb) - 1} further window{'s' if len(emb) > 2 else ''} that could fire it"
    if source is None:
        source = "audio" if isinstance(clip, np.ndarray) else Path(clip).name
    entry = Entry(
        id=max((e.id for e in kw.history), default=0) + 1,
        kind=kind,
        source=source,
        added=timestamp(),
        embeddings=emb,
        before=json.loads(json.dumps(kw.state_json())),
    )
    threshold_before = kw.threshold
    kw.history.append(entry)
    if config.negative_rule is not None:
        kw.negative_rule = config.negative_rule
    if kind == "positive":
        kw.samples += 1
    cal = recalibrate(kw, impostors, config)
    # A keyword enrolled to a false-alarm budget keeps it (re-measured with the change).
    if "budget" in kw.info:
        keep_budget(kw, load_background(embedder), cal.target_scores, DetectorConfig().for_model(embedder))
    nearest = nearest_keyword(bank, kw.centers, exclude=name)
    log.info("%s %s: threshold %.3f -> %.3f", kind, name, threshold_before, kw.threshold)
    return FeedbackResult(name, entry, how, similarity, threshold_before, kw.threshold, cal, nearest)


def add_negative(
    embedder: Embedder,
    bank: KeywordBank,
    name: str,
    clip: str | Path | np.ndarray,
    impostors: np.ndarray | None = None,
    source: str | None = None,
    config: FeedbackConfig = FeedbackConfig(),
) -> FeedbackResult:
    """Add ``clip`` as a negative example of keyword ``name`` ("that was not the keyword"), in place.

    Args:
        clip: an event clip or any audio file, or ``(samples,)`` audio at the embedder's rate.
        impostors: ``(M, dim)`` other speech for re-calibration; ``None``: the bundled set and running
            speech, as at enrolment (:func:`kws.impostors.with_running_speech`).
        source: name recorded in the history (default: the file name).
    Raises:
        EnrollmentError: the clip sounds like the keyword itself (not added).
        BankError: no such keyword, or a bank of another model.
    """
    return _add(embedder, bank, name, "negative", clip, impostors, source, config)


def add_positive(
    embedder: Embedder,
    bank: KeywordBank,
    name: str,
    clip: str | Path | np.ndarray,
    impostors: np.ndarray | None = None,
    source: str | None = None,
    config: FeedbackConfig = FeedbackConfig(),
) -> FeedbackResult:
    """Add ``clip`` as a further positive of keyword ``name`` (a missed or weak detection), in place.

    The centers are re-made from all positives and the threshold re-calibrated.
    Arguments as :func:`add_negative`.
    """
    return _add(embedder, bank, name, "positive", clip, impostors, source, config)


def undo(bank: KeywordBank, name: str, entry_id: int | None = None) -> Entry:
    """Take back the latest feedback entry of ``name`` (in place), restoring the keyword exactly.

    Entries are undone latest first: ``entry_id``, if given, must be the latest.
    Returns the entry removed.
    """
    kw = bank[name]
    if not kw.history:
        raise BankError(f"{name!r} has no feedback to undo")
    latest = kw.history[-1]
    if entry_id is not None and entry_id != latest.id:
        ids = [e.id for e in kw.history]
        if entry_id not in ids:
            raise BankError(f"{name!r} has no feedback entry {entry_id} (entries: {', '.join(map(str, ids))})")
        later = ", ".join(str(i) for i in ids[ids.index(entry_id) + 1 :][::-1])
        raise BankError(f"entry {entry_id} of {name!r} is not the latest; undo entries {later} first (latest first)")
    before = latest.before
    kw.centers = np.asarray(before["centers"], dtype=np.float32)
    kw.threshold = float(before["threshold"])
    kw.samples = int(before["samples"])
    kw.info = before["info"]
    kw.negative_rule = str(before.get("negative_rule", DEFAULT_NEGATIVE_RULE))
    kw.history.pop()
    return latest
