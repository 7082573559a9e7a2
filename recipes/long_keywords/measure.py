"""Two-word keywords against one-word keywords, and the keyword's own window against the model's.

    python recipes/long_keywords/measure.py --half choose   # develop on these speakers
    python recipes/long_keywords/measure.py --half report   # the figure to report

There are no recorded two-word phrases here, so each speaker's phrases are made from
their own isolated Speech Commands words (``speech_commands_v0.02_test_dev``, evaluation
only): each word's speech as enrolment finds it (Silero VAD), the two joined by a gap of
80-200 ms, with 250 ms of quiet either side. Ten phrases of the ten words yes ... go, each
word in two of them at the same place (:data:`PHRASES`), so that phrases are told apart by
both of their words.

Measured on one half of the speakers, on the same episodes for every row:

* 10-way 3-shot across speakers (nearest center; a class's center from 3 speakers, its
  queries from others), on the ten words and on the ten phrases: with each keyword at
  its own window (:func:`kws.enroll.keyword_frames`: queries are scored against a class
  at that class's window, as the detector scores a keyword), and with every phrase at
  the model's window, its speech centre-cropped to fit;
* a stream of the half's phrases (or words), 0.5-2.5 s of quiet between them: the ten
  keywords enrolled with :func:`kws.enroll.enroll` from the first three speakers (by
  name) that said them (the next three where enrolment refuses a take), detected in the
  other speakers' audio with the detector's defaults (or ``--offset``): recall and false
  alarms, and over a sweep of the threshold offset (the hops embedded once, as
  ``kws stream-eval`` does) the best recall at <= 20 and <= 60 false alarms per hour.

Prints a Markdown table and writes ``runs/long_keywords/<half>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from kws.audio import SAMPLE_RATE as SR
from kws.audio import load_audio, pad_or_crop
from kws.bank import KeywordBank
from kws.detect import DetectorConfig
from kws.embedder import Embedder, load_embedder
from kws.errors import EnrollmentError
from kws.impostors import load_impostors
from kws.enroll import EnrollConfig, clip_speech, enroll, find_speech, keyword_frames
from kws.metrics import few_shot_episodes, normalize, with_spoken
from kws.streams import TruthItem, embed_stream, evaluate_hops
from kws.spoken import SpokenConfig, spoken_vector

SC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "speech_commands_v0.02_test_dev"
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Each first word starts two phrases and each last word ends two ("down on", "down off"; "yes on", "down on"), as
# in "lights on" / "lights off"; no phrase ends with a word that starts another, which would make a stream of
# phrases a chain of overlapping keywords.
PHRASES = ("yes right", "yes on", "no off", "no stop", "up go", "up right", "down on", "down off", "left stop", "left go")
# Offsets of the stream's sweep, and the false alarms per hour at which the best recall is compared.
OFFSETS = np.round(np.arange(0.08, 0.42, 0.02), 3)
FA_BUDGETS = (20.0, 60.0)
QUIET = 1e-4  # the floor under the joins and the lead-in, so that no window holds digital silence


def speaker_clips(half: str) -> tuple[list[str], dict[tuple[str, str], np.ndarray]]:
    """The half's speakers and, per (speaker, word), the speech of their first take of the word."""
    speakers = sorted((SC / f"{half}_speakers.txt").read_text().split())
    cfg = EnrollConfig()
    speech = {}
    for w in WORDS:
        for s in speakers:
            takes = sorted((SC / w).glob(f"{s}_nohash_*.wav"))
            if takes:
                speech[(s, w)] = find_speech(load_audio(takes[0], SR), SR, cfg)
    return speakers, speech


def make_clips(speakers: list[str], speech: dict, phrases: bool, seed: int = 0) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Clips ``(samples,)`` with their class and speaker: each speaker's words, or phrases of their words."""
    rng = np.random.default_rng(seed)
    clips, labels, spk = [], [], []
    for name in PHRASES if phrases else WORDS:
        parts = name.split()
        for s in speakers:
            if not all((s, p) for p in parts) or not all((s, p) in speech for p in parts):
                continue
            pieces = [speech[(s, parts[0])]]
            for p in parts[1:]:
                pieces += [np.zeros(int(rng.uniform(0.08, 0.2) * SR), np.float32), speech[(s, p)]]
            edge = np.zeros(SR // 4, np.float32)
            x = np.concatenate([edge, *pieces, edge])
            clips.append((x + QUIET * rng.standard_normal(len(x))).astype(np.float32))
            labels.append(name)
            spk.append(s)
    return clips, labels, spk


class Windows:
    """Each clip's speech centred in a window of any length, embedded once per window."""

    def __init__(self, embedder: Embedder, speech: list[np.ndarray]) -> None:
        self.embedder, self.speech, self._cache = embedder, speech, {}

    def __call__(self, frames: int | None) -> np.ndarray:
        if frames not in self._cache:
            at = self.embedder.at_frames(frames)
            self._cache[frames] = normalize(at(np.stack([pad_or_crop(s, at.window_samples) for s in self.speech])))
        return self._cache[frames]


def few_shot(embedder: Embedder, speech: list[np.ndarray], labels: np.ndarray, spk: np.ndarray, own_window: bool,
             episodes: int, cfg: EnrollConfig, spoken: SpokenConfig | None) -> dict:  # fmt: skip
    """10-way 3-shot across speakers; with ``own_window`` each class at its own window (queries too);
    with ``spoken``, each center with its keyword's spoken vector at that window (as ``kws enroll --spoken``)."""
    emb = Windows(embedder, speech)
    said: dict = {}

    def vector(label: str, frames: int | None) -> np.ndarray | None:
        if spoken is not None and (label, frames) not in said:
            at = embedder.at_frames(frames)
            said[label, frames] = spoken_vector(at, label, load_impostors(at, exclude=label), spoken, cfg.trim_db)[0]
        return said.get((label, frames))

    acc, own = [], []
    for ep in few_shot_episodes(labels, 10, 3, episodes, 5, spk, seed=0):
        frames = [keyword_frames(embedder, [speech[i] for i in s], config=cfg) if own_window else None for s in ep.support]
        own += [f is not None for f in frames]
        centers = [with_spoken(normalize(emb(f)[s].mean(axis=0))[None], vector(label, f))[0]
                   for f, s, label in zip(frames, ep.support, ep.classes)]  # fmt: skip
        q = np.concatenate(ep.queries)
        true = np.concatenate([np.full(len(qi), j) for j, qi in enumerate(ep.queries)])
        scores = np.stack([emb(f)[q] @ c for f, c in zip(frames, centers)], axis=1)
        acc.append(np.mean(np.argmax(scores, axis=1) == true))
    acc = np.asarray(acc)
    return {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std() / np.sqrt(len(acc))),
            "own_window_share": float(np.mean(own))}  # fmt: skip


def stream_check(embedder: Embedder, clips: list[np.ndarray], labels: list[str], spk: list[str], cfg: EnrollConfig,
                 detector: DetectorConfig, confirm_ms: list[float], spoken: SpokenConfig | None,
                 seed: int = 1) -> dict[float, dict]:  # fmt: skip
    """Enrol each class from its first three speakers; detect it in a stream of the other clips, with
    each confirmation time (:attr:`DetectorConfig.confirm_ms`)."""
    bank = KeywordBank(embedder.model_id, embedder.dim)
    enrolled = set()
    for name in dict.fromkeys(labels):
        mine = [i for i, lab in enumerate(labels) if lab == name]
        for j in range(len(mine) - 2):  # a take enrolment refuses (another word, a bad take): the next speakers
            idx = mine[j : j + 3]
            try:
                bank.add(enroll(embedder, name, [clips[i] for i in idx], config=cfg, force=True, spoken=spoken).keyword)
            except EnrollmentError as exc:
                logging.getLogger(__name__).warning("%s: %s", name, exc)
                continue
            break
        enrolled |= set(idx)
    rng = np.random.default_rng(seed)
    rest = [i for i in rng.permutation(len(clips)) if i not in enrolled]
    parts, truth, pos = [], [], 0
    for i in rest:
        gap = np.zeros(int(rng.uniform(0.5, 2.5) * SR), np.float32)
        speech = clip_speech([clips[i]], SR, config=cfg)[0][0]
        lead = (len(clips[i]) - len(speech)) // 2  # the clips hold their speech in the middle
        parts += [gap, clips[i]]
        pos += len(gap)
        truth.append(TruthItem(labels[i], (pos + lead) / SR, (pos + lead + len(speech)) / SR, True))
        pos += len(clips[i])
    audio = np.concatenate(parts)
    audio = (audio + QUIET * rng.standard_normal(len(audio))).astype(np.float32)
    # The hops embedded once (every window of the bank), the trigger replayed at each offset of a sweep.
    detector = detector.for_model(embedder)
    offsets = sorted({detector.threshold_offset, *OFFSETS})
    hops = embed_stream(embedder, bank, audio, detector)
    results = {}
    for confirm in confirm_ms:
        trigger = dataclasses.replace(detector, confirm_ms=confirm)
        sweep = evaluate_hops(bank, hops, truth, len(audio) / SR, offsets, trigger)
        points = {round(p["offset"], 3): p for p in sweep["points"]}
        at = points[round(detector.threshold_offset, 3)]
        best = {}
        for budget in FA_BUDGETS:
            within = [p for p in sweep["points"] if p["fa_per_hour"] <= budget]
            best[budget] = max(within, key=lambda p: p["recall"]) if within else None
        results[confirm] = {
            "minutes": len(audio) / SR / 60, "occurrences": len(truth), "offset": detector.threshold_offset,
            "recall": at["recall"], "false_alarms": at["false_alarms"], "fa_per_hour": at["fa_per_hour"],
            "latency_median_s": at["latency_median_s"], "best_within_budget": best, "sweep": sweep["points"],
            "own_windows": {k.name: k.frames for k in bank.keywords.values() if k.frames is not None},
        }  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=("choose", "report"), required=True)
    parser.add_argument("--model", default=None, help="model (default: the bundled default)")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--margin", type=float, default=EnrollConfig.window_margin_s, help="EnrollConfig.window_margin_s")
    parser.add_argument("--no-stream", action="store_true", help="few-shot figures only")
    parser.add_argument("--offset", type=float, default=None, help="the stream's threshold offset (default: the model's)")
    parser.add_argument("--confirm-ms", type=float, nargs="+", default=[DetectorConfig.confirm_ms],
                        help="the detector's confirmation times to replay the stream with (default: the detector's)")
    parser.add_argument("--no-crop", action="store_true", help="leave out the phrases cropped to the model's window")
    parser.add_argument("--spoken", action="store_true", help="enrol with the speech engines' voices too (kws.spoken)")
    parser.add_argument("--out", default="runs/long_keywords")
    args = parser.parse_args()
    spoken = SpokenConfig() if args.spoken else None
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger(__name__).setLevel(logging.WARNING)

    embedder = load_embedder(args.model, backend="onnx", threads=1)
    cfg = EnrollConfig(window_margin_s=args.margin)
    # A margin below any speech keeps every keyword at the model's window, its speech centre-cropped.
    forced = dataclasses.replace(cfg, window_margin_s=-cfg.max_speech_s)
    speakers, speech = speaker_clips(args.half)
    report: dict = {"half": args.half, "model_id": embedder.model_id, "margin_s": args.margin, "offset": args.offset,
                    "spoken": args.spoken,
                    "rows": {}}  # fmt: skip
    for phrases in (False, True):
        clips, labels, spk = make_clips(speakers, speech, phrases)
        found = clip_speech(clips, SR, config=cfg)[0]
        # Enrolment refuses a keyword longer than cfg.max_speech_s: such phrases are left out (and counted).
        fits = [i for i, x in enumerate(found) if len(x) <= cfg.max_speech_s * SR]
        refused = len(clips) - len(fits)
        clips, labels, spk, found = ([a[i] for i in fits] for a in (clips, labels, spk, found))
        lengths = np.array([len(s) / SR for s in found])
        kind = "phrases" if phrases else "words"
        rows = [("own window", cfg)] + ([("model's window, centre-cropped", forced)] if phrases and not args.no_crop else [])
        for what, c in rows:
            row = {"clips": len(clips), "refused_too_long": refused, "speakers": len(set(spk)), "speech_s_median": float(np.median(lengths)),
                   "speech_s_max": float(lengths.max()),
                   "few_shot": few_shot(embedder, found, np.array(labels), np.array(spk), c is cfg, args.episodes, c, spoken)}  # fmt: skip
            if not args.no_stream:
                row["stream"] = stream_check(embedder, clips, labels, spk, c, DetectorConfig(threshold_offset=args.offset),
                                             args.confirm_ms, spoken)  # fmt: skip
            report["rows"][f"{kind}, {what}"] = row
            print(f"{kind}, {what}: {json.dumps(row)}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.half}.json").write_text(json.dumps(report, indent=2))
    budgets = " | ".join(f"best recall at <= {b:g} FA/h (offset)" for b in FA_BUDGETS)
    print(f"\n| {args.half} half | speech (median, max) | 10-way 3-shot | confirm | stream recall | "
          f"false alarms (per hour) | latency | {budgets} |")  # fmt: skip
    print("| --- " * (7 + len(FA_BUDGETS)) + "|")
    for name, row in report["rows"].items():
        fs = row["few_shot"]
        head = f"| {name} | {row['speech_s_median']:.2f} s, {row['speech_s_max']:.2f} s | {100 * fs['accuracy']:.1f} ± {100 * fs['ci95']:.1f}%"
        for confirm, st in row.get("stream", {None: None}).items():
            stream = "- | - | - | -" + " | -" * len(FA_BUDGETS)
            if st:
                best = [st["best_within_budget"][b] for b in FA_BUDGETS]
                latency = "-" if st["latency_median_s"] is None else f"{1000 * st['latency_median_s']:.0f} ms"
                stream = f"{confirm:g} ms | {100 * st['recall']:.1f}% | {st['false_alarms']} ({st['fa_per_hour']:.1f}) | {latency} | " + " | ".join(
                    f"{100 * p['recall']:.1f}% (+{p['offset']:.2f})" if p else "none" for p in best
                )  # fmt: skip
            print(f"{head} | {stream} |")


if __name__ == "__main__":
    main()
