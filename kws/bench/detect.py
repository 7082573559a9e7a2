"""``kws bench detect``: real-time factor, per-hop latency, memory and a soak run of the detector."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

NAME = "detect"
HELP = "streaming detection: RTF, per-hop latency, RSS, soak run (--load N: with N cores kept busy)"
# On a busy machine (--load) the real-time target is looser: other jobs take their share.
TARGETS = {"rtf": 0.05, "rtf_loaded": 0.1, "p99_ms": 20.0, "rss_mb": 400.0}

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kws.bench._machine import add_load_argument
    from kws.cli._common import add_model_arguments
    from kws.detect import DetectorConfig

    add_model_arguments(parser, streaming=True)
    add_load_argument(parser)
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length in minutes of audio (default 10; try 60)")
    parser.add_argument("--hop-ms", type=float, default=DetectorConfig.hop_ms, help="streaming hop (default: %(default)g)")
    parser.add_argument("--keywords", type=int, default=5, help="keywords in the synthetic bank (default 5)")
    parser.add_argument(
        "--save-events",
        metavar="DIR",
        help="soak with event clips saved to DIR under --save-events-max-mb (the bank then fires about every "
        "1.5 s; a user's own meeting.wav + meeting.json is put in DIR first and must survive)",
    )
    parser.add_argument("--save-events-max-mb", type=float, default=20.0, help="the folder's cap (default 20)")


def threads_of(args: argparse.Namespace) -> str:
    return "engine default" if args.threads is None else str(args.threads)


def _embedder(args: argparse.Namespace):
    from kws.embedder import load_embedder

    return load_embedder(args.model, backend=args.backend, threads=args.threads)


def _stream(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Alternating 2 s of speech-level noise bursts and 2 s of quiet room noise."""
    sr = 16000
    audio = (10 ** (-65 / 20) * rng.standard_normal(int(seconds * sr))).astype(np.float32)
    period = 4 * sr
    for start in range(0, len(audio) - 2 * sr, period):
        audio[start : start + 2 * sr] += (0.05 * rng.standard_normal(2 * sr)).astype(np.float32)
    return audio


def run(args: argparse.Namespace) -> dict:
    from kws.bench._machine import busy_cores

    with busy_cores(args.load):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from kws.bench._machine import rss_mb

    from kws.bank import Keyword, KeywordBank
    from kws.detect import Detector, DetectorConfig

    rng = np.random.default_rng(0)
    embedder = _embedder(args)
    bank = KeywordBank(embedder.model_id, embedder.dim)
    centers = embedder(rng.standard_normal((args.keywords, embedder.window_samples)).astype(np.float32) * 0.1)
    for i, c in enumerate(centers):
        bank.add(Keyword(f"kw{i}", c[None], threshold=0.99, samples=1))

    minute = _stream(60, rng)
    figures: dict = {"model_id": embedder.model_id, "hop_ms": args.hop_ms, "threads": threads_of(args), "load": args.load}
    for vad in (False, True):
        det = Detector(embedder, bank, DetectorConfig(hop_ms=args.hop_ms, vad=vad))
        hop_times = []
        for i in range(0, len(minute), det.hop):
            t = time.perf_counter()
            det.process(minute[i : i + det.hop])
            hop_times.append(time.perf_counter() - t)
        ms = np.asarray(hop_times[10:]) * 1000  # the first hops warm up allocators
        key = "vad" if vad else "no_vad"
        figures[key] = {
            "rtf": float(np.sum(hop_times) / 60),
            "hop_p50_ms": float(np.percentile(ms, 50)),
            "hop_p99_ms": float(np.percentile(ms, 99)),
            "windows_embedded": det.stats.embedded,
            "hops": det.stats.hops,
        }

    recorder = folder = None
    if args.save_events:
        from kws.events import EventClipConfig, EventRecorder

        folder = _folder_with_user_files(args.save_events)
        # A keyword that is the stream's own noise bursts fires at every burst (every 4 s).
        bank = KeywordBank(embedder.model_id, embedder.dim)
        bank.add(Keyword("burst", embedder(minute[None, : embedder.window_samples]), threshold=0.7, samples=1))
        recorder = EventRecorder(folder, embedder.window_samples, embedder.model_id,
                                 EventClipConfig(max_mb=args.save_events_max_mb), hop_ms=args.hop_ms)  # fmt: skip
    det = Detector(embedder, bank, DetectorConfig(hop_ms=args.hop_ms, vad=False))
    rss, folder_mb, foreign = [rss_mb()], [], set()
    t0 = time.perf_counter()
    for _ in tqdm(range(int(np.ceil(args.minutes))), desc="soak", unit="min of audio"):
        for i in range(0, len(minute), 16000):
            events = det.process(minute[i : i + 16000])
            if recorder is not None:
                recorder.feed(minute[i : i + 16000], events)
        rss.append(rss_mb())
        if folder is not None:
            mb, unlisted = _kws_files(folder)
            folder_mb.append(round(mb, 2))
            foreign |= unlisted
    soak_s = time.perf_counter() - t0
    figures["soak"] = {
        "minutes": int(np.ceil(args.minutes)),
        "rtf": soak_s / (60 * int(np.ceil(args.minutes))),
        "rss_mb_per_minute": [round(r, 1) for r in rss],
        "rss_growth_mb": rss[-1] - rss[1] if len(rss) > 1 else 0.0,
    }
    figures["rss_mb"] = max(rss)
    if folder is not None:
        recorder.close()
        kept = (folder / USER_CLIP).is_file() and (folder / USER_CLIP).with_suffix(".json").is_file()
        figures["save_events"] = {
            "cap_mb": args.save_events_max_mb, "kws_mb_per_minute": folder_mb, "max_kws_mb": max(folder_mb),
            "events": det.stats.events, "user_files_kept": kept, "files_kws_did_not_write": sorted(foreign),
        }  # fmt: skip

    nv, v = figures["no_vad"], figures["vad"]
    rtf_target = TARGETS["rtf_loaded" if args.load else "rtf"]
    print(f"detector, hop {args.hop_ms:g} ms, {threads_of(args)} thread(s), {args.keywords} keywords, {args.load} core(s) kept busy")
    print(f"  RTF              {nv['rtf']:.4f}   target <= {rtf_target}   ratio {nv['rtf'] / rtf_target:.2f}")
    print(f"  hop p50 / p99    {nv['hop_p50_ms']:.2f} / {nv['hop_p99_ms']:.2f} ms   target p99 <= {TARGETS['p99_ms']} ms   ratio {nv['hop_p99_ms'] / TARGETS['p99_ms']:.2f}")
    print(f"  RSS (max)        {figures['rss_mb']:.0f} MB   target <= {TARGETS['rss_mb']:.0f} MB   ratio {figures['rss_mb'] / TARGETS['rss_mb']:.2f}")
    print(f"  energy gate      {v['windows_embedded']}/{v['hops']} windows embedded on a stream with pauses; RTF {v['rtf']:.4f} vs {nv['rtf']:.4f}")
    print(f"  soak             {figures['soak']['minutes']} min of audio, RTF {figures['soak']['rtf']:.4f}, RSS per minute {figures['soak']['rss_mb_per_minute']} MB (growth {figures['soak']['rss_growth_mb']:+.1f} MB)")
    if folder is not None:
        ev = figures["save_events"]
        print(f"  event clips      {ev['events']} events; kws's clips at most {ev['max_kws_mb']:.1f} MB (cap {ev['cap_mb']:g} MB, "
              f"ratio {ev['max_kws_mb'] / ev['cap_mb']:.2f}); the user's meeting.wav/.json "
              f"{'kept' if ev['user_files_kept'] else 'DELETED'}; files kws did not write: {ev['files_kws_did_not_write'] or 'none'}")
    return figures


USER_CLIP = "meeting.wav"


def _folder_with_user_files(path: str):
    """The events folder, with a user's own ``meeting.wav`` + ``meeting.json`` in it (which kws must never delete)."""
    from kws.audio import write_audio

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_audio(folder / USER_CLIP, np.zeros(16000 * 5, np.float32))
    (folder / USER_CLIP).with_suffix(".json").write_text('{"title": "my meeting"}')
    return folder


def _kws_files(folder) -> tuple[float, set[str]]:
    """MiB (the cap's unit) of the clips kws lists in the folder's manifest, and the names of files neither listed nor the user's."""
    import json

    from kws.events import EVENT_MANIFEST

    manifest = folder / EVENT_MANIFEST
    listed = set(json.loads(manifest.read_text())["clips"]) if manifest.is_file() else set()
    listed |= {str(Path(n).with_suffix(".json")) for n in listed}
    mb = sum((folder / n).stat().st_size for n in listed if (folder / n).is_file()) / 2**20
    known = listed | {USER_CLIP, "meeting.json", EVENT_MANIFEST} | {p.name for p in folder.glob(".*lock")}
    return mb, {p.name for p in folder.iterdir() if p.name not in known}
