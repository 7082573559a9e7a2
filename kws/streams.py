"""Stream evaluation: long streams with ground truth, and recall / false alarms / latency.

:func:`build_stream` strings clips of a Speech Commands-layout corpus (keywords
and other words) together with random gaps over background noise;
:func:`build_sentence_stream` strings together the real-speech pack's whole
sentences (keywords inside spontaneous telephone speech, and read sentences with
no keyword). :func:`embed_stream` runs the streaming detector's embedder once
over the stream and keeps every hop's embedding (:class:`StreamHops`, which can
be saved), so that any bank of the same model is scored without embedding again;
:func:`evaluate_hops` then replays only the trigger (smoothing, thresholds,
refractory) for each threshold offset of the sweep, for all keywords together and
for each keyword alone (its DET curve).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, load_audio, trim_silence
from kws.bank import KeywordBank
from kws.detect import Detector, DetectorConfig, Trigger
from kws.events import Event
from kws.embedder import Embedder
from kws.errors import DataError
from kws.fileio import atomic_path, write_json

DEFAULT_OFFSETS = tuple(np.round(np.arange(-0.1, 0.31, 0.02), 3))

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OFFSETS", "NOTHING_HEARD", "StreamHops", "TruthItem", "build_sentence_stream", "build_stream",
    "embed_stream", "evaluate_hops", "evaluate_stream", "heard", "match_events", "plot_report", "write_report",
]


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
    speakers: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[TruthItem]]:
    """A stream of ``duration_s`` seconds: clips among gaps over background noise.

    Each placed clip is a keyword with probability ``keyword_share``, else a
    distractor word; ``speakers``, if given, are the only voices in it. Noise comes from the corpus' ``_background_noise_`` files
    (white noise if it has none), scaled to ``noise_dbfs`` RMS.

    Returns:
        ``(samples,)`` float32 audio and the truth, one item per placed clip.
    """
    from kws.data.speech_commands import SpeechCommands, background_noise

    keywords, distractor_words = list(keywords), list(distractor_words)
    if not keywords:
        raise DataError("build_stream needs at least one keyword")
    data = SpeechCommands(corpus_root, subset=subset, words=keywords + distractor_words, speakers=speakers)
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


def build_sentence_stream(
    pack_root: str | os.PathLike,
    split: str = "heldout",
    duration_s: float | None = None,
    seed: int = 0,
    gap_s: tuple[float, float] = (0.3, 1.0),
) -> tuple[np.ndarray, list[TruthItem]]:
    """A stream of the real-speech pack's sentences, in random order with short silent gaps.

    Every sentence of ``split``'s speakers that has a keyword inside it (the pack's
    ``wuw2_sentences/``) is placed once; sentences with no keyword (its
    ``librispeech_utterances/``), of ``split``'s speakers too, are added until the
    stream lasts ``duration_s`` (``None``: all of them). The other speakers' sentences
    are left for calibration (:mod:`kws.background`).

    Returns:
        ``(samples,)`` float32 audio and the truth: one keyword item per labelled
        sentence, at the word's labelled time.
    """
    from kws.data.real_pack import read_sentences

    keyed = read_sentences(pack_root, split)
    if not keyed:
        raise DataError(f"{pack_root}: no sentences with a labelled keyword for {split} speakers")
    rng = np.random.default_rng(seed)
    background = read_sentences(pack_root, split, labelled=False)
    background = [background[i] for i in rng.permutation(len(background))]
    chosen = list(keyed)
    pieces = [load_audio(s.path, SAMPLE_RATE) for s in keyed]
    total = sum(len(p) for p in pieces) / SAMPLE_RATE
    for s in background:
        if duration_s is not None and total >= duration_s:
            break
        chosen.append(s)
        pieces.append(load_audio(s.path, SAMPLE_RATE))
        total += len(pieces[-1]) / SAMPLE_RATE
    order = rng.permutation(len(chosen))
    parts, truth, pos = [], [], 0
    for i in order:
        gap = np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), dtype=np.float32)
        parts += [gap, pieces[i]]
        pos += len(gap)
        s = chosen[i]
        if s.word:
            truth.append(TruthItem(s.word, pos / SAMPLE_RATE + s.start, pos / SAMPLE_RATE + s.end, True))
        pos += len(pieces[i])
    return np.concatenate(parts).astype(np.float32), truth


@dataclass
class StreamHops:
    """Every hop of a stream, embedded once.

    Attributes:
        times: ``(hops,)`` seconds from the stream start to the end of each hop's window.
        embeddings: ``(hops, D)`` window embeddings at the model's window, or ``(hops, W, D)`` at
            each of ``windows`` (a bank with keywords longer than the model's window); NaN where
            the energy gate skipped the hop.
        model_id: the model that made them (a bank of another model cannot score them).
        window_s: the model's window, in seconds.
        source: how the stream was built (so that a saved copy is not reused for another stream).
        windows: the windows of a 3-D ``embeddings`` (stem frames, ``None``: the model's).
    """

    times: np.ndarray
    embeddings: np.ndarray
    model_id: str
    window_s: float
    source: str = ""
    windows: list[int | None] = field(default_factory=lambda: [None])

    @property
    def gated(self) -> np.ndarray:
        """``(hops,)`` whether the energy gate skipped each hop."""
        return np.isnan(self.embeddings.reshape(len(self.embeddings), -1)[:, 0])

    def scores(self, bank: KeywordBank) -> list[np.ndarray | None]:
        """Each hop's raw scores ``(n_keywords,)`` against ``bank`` (``None`` where gated)."""
        bank.check_model(self.model_id)
        kept = ~self.gated
        out: list[np.ndarray | None] = [None] * len(self.times)
        windows = self.windows if self.embeddings.ndim == 3 else None
        for i, row in zip(np.flatnonzero(kept), bank.score(self.embeddings[kept], windows)):
            out[i] = row
        return out

    def save(self, path: str | os.PathLike) -> None:
        # 0 stands for the model's window: npz holds no None.
        windows = np.array([0 if w is None else w for w in self.windows])
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, times=self.times, embeddings=self.embeddings, model_id=np.array(self.model_id),
                     window_s=np.array(self.window_s), source=np.array(self.source), windows=windows)  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StreamHops":
        try:
            with np.load(path, allow_pickle=False) as z:
                windows = [None if w == 0 else int(w) for w in z["windows"]] if "windows" in z else [None]
                return cls(z["times"], z["embeddings"], str(z["model_id"]), float(z["window_s"]), str(z["source"]),
                           windows)  # fmt: skip
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a saved stream of embedded hops ({exc}); delete it to embed again") from exc


def embed_stream(
    embedder: Embedder, bank: KeywordBank, audio: np.ndarray, cfg: DetectorConfig = DetectorConfig(), source: str = ""
) -> StreamHops:
    """Run the streaming detector's embedder over ``audio`` ``(samples,)`` (``bank`` only checks the model)."""
    from tqdm import tqdm

    detector = Detector(embedder, bank, cfg)
    windows = bank.windows
    times, emb = [], []
    gated = np.full((len(windows), embedder.dim), np.nan, dtype=np.float32)
    step = detector.hop * 100
    for i in tqdm(range(0, len(audio), step), desc="embedding", unit="chunk", leave=False):
        for t, e in detector.hop_embeddings(audio[i : i + step]):
            times.append(t)
            emb.append(gated if e is None else e)
    emb = np.stack(emb).astype(np.float32)
    # A bank of the model's window alone keeps the (hops, D) embeddings of before.
    return StreamHops(
        np.asarray(times), emb[:, 0] if windows == [None] else emb, embedder.model_id,
        embedder.window_samples / SAMPLE_RATE, source, windows,
    )  # fmt: skip


def match_events(events: list[Event], truth: list[TruthItem], window_s: float) -> tuple[list[float], list[Event]]:
    """Match events to keyword truth items; returns (latencies of hits, the false alarms).

    An event for word W hits an unmatched item of W when its window (ending at
    ``event.time``) overlaps the item: ``start < time < end + window_s``. Every
    other event is a false alarm. Latency is event time minus the item's end.
    """
    matched = [False] * len(truth)
    latencies, false_alarms = [], []
    for ev in events:
        for i, item in enumerate(truth):
            if not matched[i] and item.word == ev.keyword and item.start < ev.time < item.end + window_s:
                matched[i] = True
                latencies.append(ev.time - item.end)
                break
        else:
            false_alarms.append(ev)
    return latencies, false_alarms


NOTHING_HEARD = "(no labelled word)"


def heard(event: Event, truth: list[TruthItem], window_s: float) -> str:
    """The word most of whose speech lies in ``event``'s window, :data:`NOTHING_HEARD` where none does."""
    start = event.time - window_s
    overlap, word = max(((min(t.end, event.time) - max(t.start, start), t.word) for t in truth), default=(0.0, ""))
    return word if overlap > 0 else NOTHING_HEARD


def _replay(
    bank: KeywordBank, times: np.ndarray, scores: list[np.ndarray | None], targets: list[TruthItem],
    truth: list[TruthItem], window_s: float, duration_h: float, offset: float, cfg: DetectorConfig,
) -> dict:  # fmt: skip
    """One point of the sweep: the trigger at ``offset`` over the hop scores, matched to the truth."""
    trigger = Trigger.for_bank(bank, cfg, offset=offset)
    events = [e for e in (trigger.step(t, s) for t, s in zip(times, scores)) if e is not None]
    latencies, alarms = match_events(events, targets, window_s)
    lat = np.asarray(latencies)
    fired_on: dict[str, dict[str, int]] = {}
    for ev in alarms:
        on = fired_on.setdefault(ev.keyword, {})
        word = heard(ev, truth, window_s)
        on[word] = on.get(word, 0) + 1
    return {
        "offset": float(offset),
        "recall": len(lat) / len(targets) if targets else float("nan"),
        "false_alarms": len(alarms),
        "fa_per_hour": len(alarms) / duration_h,
        "false_alarms_on": fired_on,
        "latency_mean_s": float(lat.mean()) if len(lat) else None,
        "latency_median_s": float(np.median(lat)) if len(lat) else None,
        "latency_p90_s": float(np.percentile(lat, 90)) if len(lat) else None,
    }


def evaluate_hops(
    bank: KeywordBank,
    hops: StreamHops,
    truth: list[TruthItem],
    duration_s: float,
    offsets: Sequence[float] = DEFAULT_OFFSETS,
    cfg: DetectorConfig = DetectorConfig(),
) -> dict:
    """Recall, false alarms per hour and latency at each threshold offset, from embedded hops.

    Each offset of the sweep is added to the bank's thresholds *instead of*
    ``cfg.threshold_offset`` (the detector's default is one point of the sweep).
    ``per_keyword`` replays each keyword alone (a bank of that keyword only): its
    miss rate against its own false alarms per hour is its DET curve.

    Returns a plain-data report: ``{"duration_s", "keywords", "points": [{offset,
    recall, false_alarms, fa_per_hour, false_alarms_on, latency_mean_s,
    latency_median_s, latency_p90_s}, ...], "per_keyword": {name: [point, ...]},
    "config"}``. ``false_alarms_on`` says what was being said when each false alarm
    fired: ``{keyword: {word heard: count}}`` (see :func:`heard`).
    """
    scores = hops.scores(bank)
    duration_h = duration_s / 3600
    targets = [t for t in truth if t.keyword and t.word in bank]
    points = [_replay(bank, hops.times, scores, targets, truth, hops.window_s, duration_h, o, cfg) for o in offsets]
    per_keyword = {}
    for k, name in enumerate(bank.names):
        alone = KeywordBank(bank.model_id, bank.dim)
        alone.add(bank[name])
        col = [None if s is None else s[k : k + 1] for s in scores]
        mine = [t for t in targets if t.word == name]
        per_keyword[name] = [
            {"occurrences": len(mine), **_replay(alone, hops.times, col, mine, truth, hops.window_s, duration_h, o, cfg)}
            for o in offsets
        ]
    return {
        "duration_s": duration_s,
        "keywords": bank.names,
        "keyword_occurrences": len(targets),
        "words_placed": len(truth),
        "windows_embedded": int(np.sum(~hops.gated)),
        "hops": len(hops.times),
        "config": asdict(cfg),
        "points": points,
        "per_keyword": per_keyword,
    }


def evaluate_stream(
    embedder: Embedder,
    bank: KeywordBank,
    audio: np.ndarray,
    truth: list[TruthItem],
    offsets: Sequence[float] = DEFAULT_OFFSETS,
    cfg: DetectorConfig = DetectorConfig(),
) -> dict:
    """:func:`evaluate_hops` on ``audio`` ``(samples,)``, embedded by :func:`embed_stream`."""
    cfg = cfg.for_model(embedder)
    return evaluate_hops(bank, embed_stream(embedder, bank, audio, cfg), truth, len(audio) / SAMPLE_RATE, offsets, cfg)


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """Recall vs false alarms per hour, each keyword's DET curve, and latency vs threshold offset,
    as a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report["points"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    ax1.plot([p["fa_per_hour"] for p in pts], [p["recall"] for p in pts], marker="o")
    for p in pts[:: max(1, len(pts) // 5)]:
        ax1.annotate(f"{p['offset']:+.2f}", (p["fa_per_hour"], p["recall"]), fontsize=7)
    ax1.set(xlabel="false alarms per hour", ylabel="recall", title="all keywords (threshold offset)")
    ax1.grid(True, alpha=0.3)
    for name, kpts in report.get("per_keyword", {}).items():
        ax2.plot([p["fa_per_hour"] for p in kpts], [1 - p["recall"] for p in kpts], marker=".", label=name)
    # Zero false alarms must stay on the plot: linear near 0, logarithmic beyond 1 per hour.
    ax2.set_xscale("symlog", linthresh=1.0)
    ax2.set(xlabel="false alarms per hour", ylabel="miss rate", title="DET per keyword (alone)")
    ax2.legend(fontsize=7)
    ax2.grid(True, alpha=0.3)
    with_lat = [p for p in pts if p["latency_median_s"] is not None]
    ax3.plot([p["offset"] for p in with_lat], [p["latency_median_s"] for p in with_lat], marker="o", label="median")
    ax3.plot([p["offset"] for p in with_lat], [p["latency_p90_s"] for p in with_lat], marker=".", label="p90")
    ax3.set(xlabel="threshold offset", ylabel="latency after keyword end (s)", title="detection latency")
    ax3.legend()
    ax3.grid(True, alpha=0.3)
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
