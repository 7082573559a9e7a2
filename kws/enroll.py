"""Few-shot enrolment: a few clips of a new word → a calibrated :class:`~kws.bank.Keyword`.

Enrolment checks the clips (silence, clipping, a clip of another word, a clip too
long for the model's window), trims and centres them, embeds them, and takes the
renormalised mean of the normalised embeddings as the keyword's center (or
several centers, by a spherical k-means split, for varied samples).

The detection threshold is calibrated, not guessed (see :func:`kws.scoring.calibrate`):
from the clips' leave-one-out similarities (how well a new utterance of the word
is expected to score) and from impostor scores (speech that is not the keyword),
or, with a false-alarm budget, on running speech (:mod:`kws.background`). The
keyword's confusable words are kept as its negatives (:mod:`kws.confusables`).
How a keyword scores and is calibrated lives in :mod:`kws.scoring`.

The window follows the keyword: on a model over a stem, a keyword whose longest
clip's speech, plus a margin, does not fit the model's window gets a window of its
own, the fewest stem frames that hold it (:func:`keyword_frames`, up to
``EnrollConfig.max_speech_s`` of speech), and is embedded, stored, scored and
streamed at that window (:meth:`kws.embedder.Embedder.at_frames`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import TRIM_DB, loudest_rms, pad_or_crop, trim_silence
from kws.background import Background, BudgetCalibration, apply_budget, calibrate_to_budget, load_background
from kws.bank import CONFUSABLE_SOURCE, Entry, Keyword, KeywordBank, keyword_name
from kws.confusables import ConfusableConfig, Neighbour, confusable_embeddings
from kws.detect import DetectorConfig
from kws.embedder import Embedder
from kws.errors import EnrollmentError
from kws.fileio import timestamp
from kws.impostors import impostors_from_path, with_running_speech
from kws.metrics import normalize
from kws.scoring import (
    KMEANS_ITERS,
    TARGET_QUANTILE,
    Calibration,
    FeedbackConfig,
    calibrate,
    fire_threshold,
    kmeans_assign,
    leave_one_out_scores,
    make_centers,
    nearest_keyword,
    recenter,
    suppressed,
)
from kws.spoken import SpokenConfig, spoken_vector

log = logging.getLogger(__name__)

__all__ = [
    "EnrollConfig", "EnrollResult", "MAX_CLIPS", "augment_clips", "check_speech_length", "clip_speech",
    "embed_clips", "embed_prepared", "enroll", "keyword_frames", "prepare_clips",
]

MAX_CLIPS = 10


@dataclass
class EnrollConfig:
    """Limits of the clip checks and of calibration.

    Attributes:
        silence_rms: a clip whose loudest 100 ms has an RMS below this (about
            -60 dBFS) is silence and is refused.
        clip_level: samples at or beyond this magnitude count as clipped.
        clip_fraction: more clipped samples than this fraction → a warning.
        vad: find each clip's speech with Silero VAD (:mod:`kws.vad`), which tells
            speech from line noise; off, or where it hears no speech, the energy trim below.
        trim_db: leading/trailing frames this far below the loudest are trimmed.
        outlier_warn: a clip whose leave-one-out similarity is this far below the
            median of the others gets a warning (likely another word or a bad take).
        outlier_refuse: ... this far below, the clip is refused.
        similar_limit: a center this close (cosine) to another keyword's → a warning.
        target_quantile: the threshold is not set above this quantile of the
            leave-one-out similarities (0.25: at least ~75% of the enrolment
            clips would be accepted).
        augment_copies: augmented copies made of each clip when augmenting.
        kmeans_iters: iterations of the k-means split for several centers.
        seed: seed of augmentation.
        min_speech_s: a clip with less speech than this (after trimming silence)
            is refused: too little of a word to tell it from others.
        max_expected_far: a keyword whose calibrated threshold still lets more
            than this fraction of the impostors through is refused unless forced.
        max_speech_s: on a model over a stem, a clip with more speech than this is
            refused (a model with a fixed window refuses speech longer than its window).
        window_margin_s: a keyword's window holds its longest clip's speech plus this
            much, so that a detector window one or two hops off still holds the whole
            keyword; a keyword that does not fit the model's window with it gets its own.
    """

    silence_rms: float = 1e-3
    vad: bool = True
    clip_level: float = 0.999
    clip_fraction: float = 1e-3
    trim_db: float = TRIM_DB
    outlier_warn: float = 0.15
    outlier_refuse: float = 0.35
    similar_limit: float = 0.85
    target_quantile: float = TARGET_QUANTILE
    augment_copies: int = 4
    kmeans_iters: int = KMEANS_ITERS
    seed: int = 0
    # The shortest of 275 real Speech Commands test words lasts 0.26 s at trim_db.
    min_speech_s: float = 0.15
    max_expected_far: float = 0.1
    # The aim: keywords of two words, up to 2 s.
    max_speech_s: float = 2.0
    # Chosen on two-word phrases of the choose half of the Speech Commands test speakers
    # (recipes/long_keywords/README.md): 0.15 / 0.3 / 0.5 / 0.8 s gave 75 / 80 / 84 / 77% stream
    # recall at 218 / 182 / 149 / 214 false alarms per hour. A one-word keyword (speech up to 1.24 s)
    # keeps the model's window.
    window_margin_s: float = 0.5


@dataclass
class EnrollResult:
    """The enrolled keyword and what enrolment found.

    Attributes:
        keyword: the new keyword (not yet in any bank: ``bank.add(result.keyword)``).
        calibration: how its threshold was chosen (also stored in ``keyword.info``).
        warnings: things the user should know (clipping, an odd clip, a similar keyword ...).
        nearest: the most similar other keyword in the bank and its cosine, if any.
        confusables: the confusable words kept as negatives, each with its highest
            cosine (over voices) to the keyword's centers.
        budget: how the threshold met a false-alarm budget on running speech, if one was asked.
    """

    keyword: Keyword
    calibration: Calibration
    warnings: list[str] = field(default_factory=list)
    nearest: tuple[str, float] | None = None
    confusables: list[tuple[Neighbour, float]] = field(default_factory=list)
    budget: BudgetCalibration | None = None

    @property
    def threshold(self) -> float:
        return self.keyword.threshold


# ---------------------------------------------------------------------------- clip checks


def clip_speech(
    clips: Sequence[np.ndarray],
    sample_rate: int,
    names: Sequence[str] | None = None,
    config: EnrollConfig | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """Check enrolment clips and find their speech (:func:`find_speech`).

    Refuses (:class:`EnrollmentError`) silence and malformed audio; warns about clipping.

    Args:
        clips: 1-D float arrays at ``sample_rate``.
        names: how to name each clip in messages (file names); default ``clip 1`` ...
    Returns:
        each clip's speech ``(samples,)`` float32 (the whole clip where none is found), and the warnings.
    """
    cfg = config or EnrollConfig()
    names = _clip_names(clips, names)
    out, warnings = [], []
    for x, name in zip(clips, names):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1 or len(x) == 0:
            raise EnrollmentError(f"{name}: expected non-empty mono audio, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise EnrollmentError(f"{name}: audio contains NaN or infinite samples")
        level = loudest_rms(x, sample_rate // 10)
        if level < cfg.silence_rms:
            raise EnrollmentError(
                f"{name}: is silent (loudest 100 ms at {20 * np.log10(max(level, 1e-10)):.0f} dBFS); "
                "record the keyword again, closer to the microphone"
            )
        clipped = float(np.mean(np.abs(x) >= cfg.clip_level))
        if clipped > cfg.clip_fraction:
            warnings.append(
                f"{name}: {100 * clipped:.1f}% of samples are clipped; lower the input gain or "
                "speak further from the microphone"
            )
        speech = find_speech(x, sample_rate, cfg)
        out.append(speech if len(speech) else x)
    return out, warnings


def prepare_clips(
    clips: Sequence[np.ndarray],
    window_samples: int,
    sample_rate: int,
    names: Sequence[str] | None = None,
    config: EnrollConfig | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Check, trim and centre enrolment clips in a window of ``window_samples``.

    Refuses (:class:`EnrollmentError`) silence and clips whose speech is longer
    than the window; warns about clipping.

    Args:
        clips: 1-D float arrays at ``sample_rate``.
        names: how to name each clip in messages (file names); default ``clip 1`` ...
    Returns:
        ``(n_clips, window_samples)`` float32 with each clip's speech centred,
        and the warnings.
    """
    speech, warnings = clip_speech(clips, sample_rate, names, config)
    _refuse_longer(speech, _clip_names(clips, names), window_samples, sample_rate)
    return _centred(speech, window_samples), warnings


def keyword_frames(
    embedder: Embedder, speech: Sequence[np.ndarray], names: Sequence[str] | None = None, config: EnrollConfig | None = None
) -> int | None:
    """The window of a keyword whose clips' speech is ``speech`` (``(samples,)`` each, :func:`clip_speech`).

    Returns ``None`` (the model's own window) when the longest speech plus
    ``config.window_margin_s`` fits it, else the fewest stem frames whose window holds
    that much (:meth:`kws.embedder.Embedder.frames_to_hold`). Refuses (:class:`EnrollmentError`)
    speech longer than ``config.max_speech_s``, or, on a model with a fixed window, than that window.
    """
    cfg = config or EnrollConfig()
    names = _clip_names(speech, names)
    sr = embedder.sample_rate
    longest = max(len(s) for s in speech)
    frames = embedder.frames_to_hold(longest + round(cfg.window_margin_s * sr))
    if frames is None:  # a window that cannot follow the keyword
        _refuse_longer(speech, names, embedder.window_samples, sr)
        return None
    _refuse_longer(speech, names, round(cfg.max_speech_s * sr), sr, "the {:.2f} s a keyword may last")
    return frames if frames > embedder.frames else None


def _clip_names(clips: Sequence, names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [f"clip {i + 1}" for i in range(len(clips))]


def _refuse_longer(
    speech: Sequence[np.ndarray], names: Sequence[str], limit: int, sample_rate: int, what: str = "the model's {:.2f} s window"
) -> None:
    """Refuse (:class:`EnrollmentError`) a clip whose speech is longer than ``limit`` samples
    (``what``, formatted with the limit in seconds)."""
    for s, name in zip(speech, names):
        if len(s) > limit:
            raise EnrollmentError(
                f"{name}: the speech lasts {len(s) / sample_rate:.2f} s after trimming silence, longer than "
                f"{what.format(limit / sample_rate)}; use a shorter keyword or cut the clip to the keyword alone"
            )


def _centred(speech: Sequence[np.ndarray], window_samples: int) -> np.ndarray:
    """Each clip's speech centred in a window: ``(n_clips, window_samples)`` float32."""
    return np.stack([pad_or_crop(s, window_samples) for s in speech]).astype(np.float32)


def find_speech(x: np.ndarray, sample_rate: int, config: EnrollConfig) -> np.ndarray:
    """The speech of a clip ``(samples,)``: the span Silero VAD hears (``config.vad``), or
    else, and when it hears none (a tone, a hum), what the energy trim keeps."""
    if config.vad:
        from kws.vad import speech_bounds

        bounds = speech_bounds(x)
        if bounds is not None:
            return x[bounds[0] : bounds[1]]
    return trim_silence(x, frame=sample_rate // 100, db=config.trim_db)


def check_speech_length(
    clips: Sequence[np.ndarray], sample_rate: int, names: Sequence[str], config: EnrollConfig
) -> None:
    """Refuse (:class:`EnrollmentError`) clips ``(samples,)`` with less than
    ``config.min_speech_s`` of speech once silence is trimmed."""
    for x, name in zip(clips, names):
        speech = find_speech(np.asarray(x, dtype=np.float32), sample_rate, config)
        if len(speech) < config.min_speech_s * sample_rate:
            raise EnrollmentError(
                f"{name}: only {len(speech) / sample_rate:.2f} s of speech (at least {config.min_speech_s:g} s "
                "needed); record the whole keyword"
            )


def augment_clips(prepared: np.ndarray, copies: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Lightly varied copies of centred clips: shift (±60 ms), gain (±6 dB), noise (20–40 dB SNR).

    Args:
        prepared: ``(n, samples)``.
    Returns:
        ``(n, copies, samples)`` float32.
    """
    rng = np.random.default_rng(seed)
    n, length = prepared.shape
    out = np.empty((n, copies, length), dtype=np.float32)
    max_shift = int(0.06 * sample_rate)
    for i, x in enumerate(prepared):
        rms = np.sqrt(np.mean(x**2)) + 1e-8
        for j in range(copies):
            y = np.roll(x, int(rng.integers(-max_shift, max_shift + 1)))
            y = y * 10 ** (rng.uniform(-6, 6) / 20)
            noise_rms = rms * 10 ** (-rng.uniform(20, 40) / 20)
            out[i, j] = np.clip(y + noise_rms * rng.standard_normal(length), -1, 1)
    return out


# ---------------------------------------------------------------------------- centers and scores


def embed_clips(
    embedder: Embedder,
    clips: Sequence[np.ndarray],
    augment: bool = False,
    names: Sequence[str] | None = None,
    config: EnrollConfig | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Check, trim, centre (and optionally augment) enrolment clips, then embed them.

    Returns:
        ``(n_clips, m, D)`` unit-norm embeddings, per clip its own first and then
        its ``m - 1`` augmented copies (``m = 1`` without augmentation), and the
        clip-check warnings.
    """
    cfg = config or EnrollConfig()
    prepared, warnings = prepare_clips(clips, embedder.window_samples, embedder.sample_rate, names, cfg)
    return embed_prepared(embedder, prepared, augment, cfg), warnings


def embed_prepared(embedder: Embedder, prepared: np.ndarray, augment: bool, cfg: EnrollConfig) -> np.ndarray:
    """Embed centred clips ``(n_clips, window_samples)`` (and, with ``augment``, their augmented copies)
    → ``(n_clips, m, D)`` unit-norm, per clip its own first (see :func:`embed_clips`)."""
    waves = prepared[:, None]
    if augment:
        copies = augment_clips(prepared, cfg.augment_copies, embedder.sample_rate, cfg.seed)
        waves = np.concatenate([waves, copies], axis=1)
    n, m, length = waves.shape
    return normalize(embedder(waves.reshape(n * m, length))).reshape(n, m, -1)


def enroll(
    embedder: Embedder,
    name: str,
    clips: list[np.ndarray],
    impostors: np.ndarray | str | Path | None = None,
    target_far: float = 0.01,
    centers: int = 1,
    augment: bool = False,
    bank: KeywordBank | None = None,
    clip_names: Sequence[str] | None = None,
    config: EnrollConfig | None = None,
    force: bool = False,
    confusables: ConfusableConfig | None = None,
    fa_per_hour: float | None = None,
    background: Background | None = None,
    detector: DetectorConfig = DetectorConfig(),
    spoken: SpokenConfig | None = None,
    say: str | None = None,
) -> EnrollResult:
    """Enrol keyword ``name`` from 1–10 clips.

    Args:
        embedder: the model; its ``model_id`` must match ``bank``'s.
        name: the keyword's name.
        clips: 1-D float32 arrays at ``embedder.sample_rate``.
        impostors: ``(M, D)`` embeddings of other speech, or a path to them (an impostor-set
            ``.npz`` or a folder of clips, see :func:`kws.impostors.impostors_from_path`); ``None``:
            the bundled set (if it was made for this model) and, for a keyword at the model's window,
            windows of its bundled running speech (:func:`kws.impostors.with_running_speech`);
            without the clips of ``name`` itself.
            A keyword with a window of its own (:func:`keyword_frames`) is calibrated on a folder's
            clips embedded at that window; stored embeddings are at the model's window
            (``keyword.info["window"]`` says which).
        target_far: false-accept rate the threshold aims at on the impostors.
        centers: number of centers (a k-means split of the clips; at most one per clip).
        augment: also embed lightly augmented copies of each clip into the centers.
        bank: existing keywords, to warn about similar ones (not modified).
        clip_names: names of the clips in messages (file names).
        force: enrol even when the calibration is hopeless (see ``EnrollConfig.max_expected_far``).
        confusables: find the keyword's phonetic neighbours, speak them with espeak-ng and
            keep them as negatives, one feedback entry per word (see :mod:`kws.confusables`);
            ``None``: none.
        fa_per_hour: set the threshold so that a detector with ``detector``'s settings fires at
            most this often per hour on ``background`` speech (``None``: the bundled background
            of the model), instead of from isolated impostor clips (see :mod:`kws.background`);
            not for a keyword with a window of its own (the background is embedded at the model's).
        spoken: also hear the keyword as the installed speech engines say it (``say``, default
            ``name``), in ``spoken.voices`` voices per source, and add that to its centers
            (:mod:`kws.spoken`), at the keyword's window; ``None``: the clips alone. kws's own
            entry points (``kws enroll``, :meth:`kws.Spotter.enroll`, ``kws serve``, ``kws demo``)
            pass :data:`kws.spoken.SPOKEN_DEFAULT` unless told otherwise.
    Returns:
        the keyword (add it with ``bank.add(result.keyword)``), its calibration and warnings.
    Raises:
        EnrollmentError: refused clips or options; BankError: a bank of another model.
    """
    cfg = config or EnrollConfig()
    name = keyword_name(name)
    if not 1 <= len(clips) <= MAX_CLIPS:
        raise EnrollmentError(f"enrolment takes 1 to {MAX_CLIPS} clips, got {len(clips)}")
    if not 1 <= centers <= len(clips):
        raise EnrollmentError(f"centers must be between 1 and the number of clips ({len(clips)}), got {centers}")
    if not 0 < target_far < 1:
        raise EnrollmentError(f"target false-accept rate must be between 0 and 1, got {target_far}")
    if bank is not None:
        bank.check_model(embedder.model_id)

    names = _clip_names(clips, clip_names)
    speech, warnings = clip_speech(clips, embedder.sample_rate, names, cfg)
    frames = keyword_frames(embedder, speech, names, cfg)
    if frames is not None and fa_per_hour is not None:
        raise EnrollmentError(
            f"{name!r} is longer than the model's window: it gets its own ({frames} stem frames), but the background "
            f"speech that --fa-per-hour calibrates on is embedded at the model's window; enrol it without "
            "--fa-per-hour (its threshold then comes from impostor clips)"
        )
    # The keyword's model: the embedder at the keyword's own window (itself for most keywords).
    kw_embedder = embedder.at_frames(frames)
    impostors_at_window = isinstance(impostors, (str, Path)) and Path(impostors).is_dir()
    bundled = impostors is None
    if impostors is None or isinstance(impostors, (str, Path)):
        impostors = impostors_from_path(kw_embedder, impostors, exclude=name)
    # The speech engines' voices are set against other words, the threshold against running speech too.
    other_words = impostors
    if bundled:
        impostors = with_running_speech(kw_embedder, impostors, exclude=name, frames=frames)
    impostors = normalize(impostors)
    if impostors.ndim != 2 or impostors.shape[1] != embedder.dim or len(impostors) == 0:
        raise EnrollmentError(f"impostor embeddings have shape {impostors.shape}, expected (M, {embedder.dim})")

    emb = embed_prepared(kw_embedder, _centred(speech, kw_embedder.window_samples), augment, cfg)
    check_speech_length(clips, embedder.sample_rate, names, cfg)
    n = len(emb)
    clip_emb = normalize(emb.mean(axis=1))
    assign = kmeans_assign(clip_emb, centers, cfg.kmeans_iters) if centers > 1 else np.zeros(n, dtype=int)
    spoken_info, spoken_vec = None, None
    if spoken is not None:
        spoken.validate()
        text = say if say is not None else name
        try:
            spoken_vec, sources = spoken_vector(kw_embedder, text, other_words, spoken, cfg.trim_db)
        except EnrollmentError as exc:
            if spoken.required:
                raise
            warnings.append(f"enrolled from the clips alone: {exc}")
        else:
            spoken_info = {"text": text, "sources": sources, "voices": spoken.voices, "weight": spoken.weight}
    kw_centers = make_centers(emb, assign, np.ones(n, dtype=bool), spoken_vec)
    target = leave_one_out_scores(emb, assign, spoken_vec) if n > 1 else np.zeros(0, dtype=np.float32)

    if n >= 3 and centers == 1:
        warnings += _check_outliers(target, names, cfg)
    elif n == 1:
        warnings.append("one clip only: the threshold rests on impostor speech alone; enrol 3 or more clips")

    cal = calibrate(target, (impostors @ kw_centers.T).max(axis=1), target_far, cfg.target_quantile)
    _check_calibration(name, cal, cfg, force)
    if cal.limited_by == "targets":
        warnings.append(
            f"the threshold was lowered to {cal.threshold:.3f} so that most enrolment clips pass; "
            f"expected false-accept rate {100 * cal.expected_far:.1f}% instead of {100 * target_far:.1f}%: "
            "enrol more (and more consistent) clips, or choose a longer keyword"
        )

    nearest = nearest_keyword(bank, kw_centers, exclude=name) if bank is not None else None
    if nearest is not None and nearest[1] > cfg.similar_limit:
        warnings.append(
            f"{name!r} is very similar to the enrolled keyword {nearest[0]!r} (cosine {nearest[1]:.3f}); "
            "they may be taken for each other: enrol more samples of both, or choose a longer phrase"
        )
    info = {"calibration": cal.to_json(), "augment": augment, "clip_checks": list(warnings)}
    if spoken_info is not None:
        info["spoken"] = spoken_info
    if frames is not None:
        info["window"] = {
            "frames": frames,
            "seconds": round(kw_embedder.window_samples / embedder.sample_rate, 3),
            # A stored impostor set (the bundled one) holds embeddings at the model's window only.
            "impostors_at": "keyword's window" if impostors_at_window else f"model's window ({embedder.frames} frames)",
        }
    # Each clip's own embedding is kept so that feedback can re-make the centers with more clips.
    keyword = Keyword(
        name=name,
        centers=kw_centers.astype(np.float32),
        threshold=cal.threshold,
        samples=n,
        info=info,
        positives=emb[:, 0].astype(np.float32),
        frames=frames,
        spoken=spoken_vec,
    )
    added: list[tuple[Neighbour, float]] = []
    if confusables is not None:
        found = confusable_embeddings(kw_embedder, name, confusables, cfg.trim_db)
        if found is None:
            warnings.append(
                f"espeak-ng cannot say {name!r} as written (digits, symbols or another script): enrolled "
                "without confusable words; name the keyword in letters to get them"
            )
        else:
            added = _add_confusables(keyword, *found)
    budget = None
    if fa_per_hour is not None:
        background = background if background is not None else load_background(embedder)
        detector = detector.for_model(embedder)
        fallback = float(fire_threshold(keyword.threshold, detector.threshold_offset))
        budget = calibrate_to_budget(
            keyword, background, fa_per_hour, target, detector, cfg.target_quantile, fallback
        )
        apply_budget(keyword, budget, detector)
        # Confusable entries leave the threshold as it is: undoing one must keep this one.
        for entry in keyword.history:
            entry.before = json.loads(json.dumps(keyword.state_json()))
        if not budget.met:
            warnings.append(
                f"{name!r} cannot meet {fa_per_hour:g} false alarms per hour without missing more than "
                f"{100 * cfg.target_quantile:.0f}% of its enrolment clips: background speech fires it "
                f"{budget.expected_fa_per_hour:.1f} times per hour at its threshold, the best budget reachable; "
                "enrol more, clearer clips, or choose a longer keyword"
            )
    for w in warnings:
        log.warning("%s", w)
    return EnrollResult(
        keyword=keyword, calibration=cal, warnings=warnings, nearest=nearest, confusables=added, budget=budget
    )


def _add_confusables(keyword: Keyword, neighbours: list[Neighbour], emb: np.ndarray) -> list[tuple[Neighbour, float]]:
    """Keep each neighbour's embeddings ``emb`` ``(n_words, n_voices, D)`` as a negative entry of
    ``keyword`` (in place); returns the neighbours kept with their closeness to the keyword.

    The threshold stays as calibrated, now and when feedback re-calibrates it
    (:func:`kws.scoring.recalibrate` leaves confusable words out): calibrating with them
    lowers it, since the impostors nearest the keyword are then suppressed, and on streams
    that cost more false alarms than they saved (``recipes/false_alarms/README.md``).
    A neighbour that would suppress one of the keyword's own enrolment clips (it sounds,
    to this model, like the keyword itself) is left out.
    """
    kept: list[tuple[Neighbour, float]] = []
    for nb, e in zip(neighbours, emb):
        _, loo, aligned = recenter(keyword, FeedbackConfig())
        if aligned is not None and len(loo) and suppressed(loo, aligned, e).any():
            log.info("confusable %r of %r left out: it sounds like the keyword's own clips", nb.word, keyword.name)
            continue
        keyword.history.append(
            Entry(
                id=len(keyword.history) + 1,
                kind="negative",
                source=f"{CONFUSABLE_SOURCE}{nb.word} ({nb.kind})",
                added=timestamp(),
                embeddings=e,
                before=json.loads(json.dumps(keyword.state_json())),
            )
        )
        kept.append((nb, float((e @ keyword.centers.T).max())))
    return kept


def _check_calibration(name: str, cal: Calibration, cfg: EnrollConfig, force: bool) -> None:
    """Refuse a keyword whose threshold lets through more impostors than ``cfg.max_expected_far``
    (unless ``force``): it would fire on a large share of all speech."""
    if cal.expected_far <= max(cfg.max_expected_far, cal.target_far) or force:
        return
    raise EnrollmentError(
        f"{name!r} cannot be told from other speech: at threshold {cal.threshold:.3f} it would accept "
        f"{100 * cal.expected_far:.0f}% of impostor clips (target {100 * cal.target_far:g}%, limit "
        f"{100 * cfg.max_expected_far:g}%); enrol more, clearer and more consistent clips, or choose a longer "
        "keyword (--force enrols it anyway)"
    )


def _check_outliers(loo: np.ndarray, names: Sequence[str], cfg: EnrollConfig) -> list[str]:
    """Refuse or warn about clips whose leave-one-out similarity is far below the others'."""
    warnings = []
    for i, s in enumerate(loo):
        rest = float(np.median(np.delete(loo, i)))
        gap = rest - float(s)
        msg = (
            f"{names[i]}: similarity {s:.3f} to the other clips, whose median is {rest:.3f}; "
            "it may be a different word or a bad take"
        )
        if gap > cfg.outlier_refuse:
            raise EnrollmentError(msg + ": record it again or leave it out")
        if gap > cfg.outlier_warn:
            warnings.append(msg)
    return warnings
