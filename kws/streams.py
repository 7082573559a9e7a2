"""Stream evaluation: long synthetic streams with ground truth, and recall / false alarms / latency.

:func:`build_stream` strings clips of a Speech Commands-layout corpus (keywords
and other words) together with random gaps over background noise.
:func:`evaluate_stream` runs the streaming detector once to get every hop's
scores, then replays only the trigger (smoothing, thresholds, refractory) for
each threshold offset of the sweep, which is cheap.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, trim_silence
from kws.bank import KeywordBank
from kws.detect import Detector, DetectorConfig, Event, Trigger
from kws.embedder import Embedder
from kws.errors import DataError
from kws.fileio import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TruthItem:
    """A word placed in the stream: its speech spans ``[start, end]`` seconds."""

    word: str
    start: float
    end: float
    keyword: bool


def build_stream(
    corpus_root: str | os.PathLike,
    keywords: Sequence[str],
    distractor_words: Sequence[str],
    duration_s: float,
    seed: int = 0,
    subset: str = "testing",
    keyword_share: float = 0.4,
    gap_s: tuple[float, float] = (0.3, 2.0),
    noise_dbfs: float = -45.0,
) -> tuple[np.ndarray, list[TruthItem]]:
    """A stream of ``duration_s`` seconds: clips among gaps over background noise.

    Each placed clip is a keyword with probability ``keyword_share``, else a
    distractor word. Noise comes from the corpus' ``_background_noise_`` files
    (white noise if it has none), scaled to ``noise_dbfs`` RMS.

    Returns:
        ``(samples,)`` float32 audio and the truth, one item per placed clip.
    """
    from kws.data.speech_commands import SpeechCommands, background_noise

    keywords, distractor_words = list(keywords), list(distractor_words)
    if not keywords:
        raise DataError("build_stream needs at least one keyword")
    data = SpeechCommands(corpus_root, subset=subset, words=keywords + distractor_words)
    by_word = {w: [i for i, c in enumerate(data.clips) if c.word == w] for w in data.classes}
    empty = [w for w, idx in by_word.items() if not idx]
    if empty:
        raise DataError(f"{corpus_root}: no {subset} clips for word(s) {', '.join(empty)}")
    rng = np.random.default_rng(seed)
    total = int(round(duration_s * SAMPLE_RATE))
    noises = [n for n in background_noise(corpus_root) if len(n)]
    if noises:
        noise = np.resize(noises[int(rng.integers(len(noises)))], total).astype(np.float32)
    else:
        noise = rng.standard_normal(total).astype(np.float32)
    noise *= 10 ** (noise_dbfs / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-9)
    audio = noise.copy()
    truth: list[TruthItem] = []
    pos = int(rng.uniform(*gap_s) * SAMPLE_RATE)
    while True:
        is_kw = not distractor_words or rng.random() < keyword_share
        word = keywords[int(rng.integers(len(keywords)))] if is_kw else distractor_words[int(rng.integers(len(distractor_words)))]
        clip = data.audio(by_word[word][int(rng.integers(len(by_word[word])))])
        speech = trim_silence(clip, db=30.0, margin=0)
        clip = speech if len(speech) else clip
        if pos + len(clip) > total:
            break
        audio[pos : pos + len(clip)] += clip
        truth.append(TruthItem(word, pos / SAMPLE_RATE, (pos + len(clip)) / SAMPLE_RATE, is_kw))
        pos += len(clip) + int(rng.uniform(*gap_s) * SAMPLE_RATE)
    return np.clip(audio, -1.0, 1.0), truth


def hop_scores(
    embedder: Embedder, bank: KeywordBank, audio: np.ndarray, cfg: DetectorConfig = DetectorConfig()
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Every hop's time ``(hops,)`` and raw scores (``None`` where the energy gate skipped it)."""
    from tqdm import tqdm

    detector = Detector(embedder, bank, cfg)
    times, scores = [], []
    step = detector.hop * 100
    for i in tqdm(range(0, len(audio), step), desc="scoring", unit="chunk", leave=False):
        for t, s in detector.hop_scores(audio[i : i + step]):
            times.append(t)
            scores.append(s)
    return np.asarray(times), scores


def match_events(events: list[Event], truth: list[TruthItem], window_s: float) -> tuple[list[float], int]:
    """Match events to keyword truth items; returns (latencies of hits, false alarms).

    An event for word W hits an unmatched item of W when its window (ending at
    ``event.time``) overlaps the item: ``start < time < end + window_s``. Every
    other event is a false alarm. Latency is event time minus the item's end.
    """
    matched = [False] * len(truth)
    latencies, false_alarms = [], 0
    for ev in events:
        for i, item in enumerate(truth):
            if not matched[i] and item.word == ev.keyword and item.start < ev.time < item.end + window_s:
                matched[i] = True
                latencies.append(ev.time - item.end)
                break
        else:
            false_alarms += 1
    return latencies, false_alarms


def evaluate_stream(
    embedder: Embedder,
    bank: KeywordBank,
    audio: np.ndarray,
    truth: list[TruthItem],
    offsets: Sequence[float] = tuple(np.round(np.arange(-0.1, 0.31, 0.02), 3)),
    cfg: DetectorConfig = DetectorConfig(),
) -> dict:
    """Recall, false alarms per hour and latency at each threshold offset.

    Each offset of the sweep is added to the bank's thresholds *instead of*
    ``cfg.threshold_offset`` (the detector's default is one point of the sweep).

    Returns a plain-data report: ``{"duration_s", "keywords", "points": [{offset,
    recall, false_alarms, fa_per_hour, latency_mean_s, latency_median_s,
    latency_p90_s}, ...], "config"}``.
    """
    times, scores = hop_scores(embedder, bank, audio, cfg)
    duration_h = len(audio) / SAMPLE_RATE / 3600
    targets = [t for t in truth if t.keyword and t.word in bank]
    window_s = embedder.window_samples / SAMPLE_RATE
    points = []
    for off in offsets:
        trigger = Trigger.for_bank(bank, cfg, offset=off)
        events = [e for e in (trigger.step(t, s) for t, s in zip(times, scores)) if e is not None]
        latencies, fa = match_events(events, targets, window_s)
        lat = np.asarray(latencies)
        points.append(
            {
                "offset": float(off),
                "recall": len(lat) / len(targets) if targets else float("nan"),
                "false_alarms": fa,
                "fa_per_hour": fa / duration_h,
                "latency_mean_s": float(lat.mean()) if len(lat) else None,
                "latency_median_s": float(np.median(lat)) if len(lat) else None,
                "latency_p90_s": float(np.percentile(lat, 90)) if len(lat) else None,
            }
        )
    return {
        "duration_s": len(audio) / SAMPLE_RATE,
        "keywords": bank.names,
        "keyword_occurrences": len(targets),
        "words_placed": len(truth),
        "windows_embedded": sum(s is not None for s in scores),
        "hops": len(scores),
        "config": asdict(cfg),
        "points": points,
    }


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """Recall vs false alarms per hour, and latency vs threshold offset, as a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report["points"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([p["fa_per_hour"] for p in pts], [p["recall"] for p in pts], marker="o")
    for p in pts[:: max(1, len(pts) // 5)]:
        ax1.annotate(f"{p['offset']:+.2f}", (p["fa_per_hour"], p["recall"]), fontsize=7)
    ax1.set(xlabel="false alarms per hour", ylabel="recall", title="recall vs false alarms (threshold offset)")
    ax1.grid(True, alpha=0.3)
    with_lat = [p for p in pts if p["latency_median_s"] is not None]
    ax2.plot([p["offset"] for p in with_lat], [p["latency_median_s"] for p in with_lat], marker="o", label="median")
    ax2.plot([p["offset"] for p in with_lat], [p["latency_p90_s"] for p in with_lat], marker=".", label="p90")
    ax2.set(xlabel="threshold offset", ylabel="latency after keyword end (s)", title="detection latency")
    ax2.legend()
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``stream_eval.json`` and ``stream_eval.png`` in ``out_dir``."""
    out = Path(out_dir)
    json_path, png_path = out / "stream_eval.json", out / "stream_eval.png"
    write_json(json_path, report)
    plot_report(report, png_path)
    return json_path, png_path
