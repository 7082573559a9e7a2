"""Time to enrol a keyword from 3 clips on one thread (embedding, checks, confusable words and calibration)."""

from __future__ import annotations

import argparse
import time

import numpy as np

NAME = "enroll"
HELP = "time to enrol a keyword from 3 clips on one thread (confusable words and the speech engines' voices included)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kws.cli._common import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=20, help="timed enrolments (20)")
    parser.add_argument("--impostors", type=int, default=2000, help="impostor embeddings scored (2000)")
    parser.add_argument("--augment", action="store_true", help="enrol with augmentation")
    parser.add_argument(
        "--no-confusables", action="store_true", help="enrol without confusable words (as `kws enroll --no-confusables`)"
    )
    parser.add_argument("--no-spoken", action="store_true", help="enrol from the clips alone (as `kws enroll --no-spoken`)")
    parser.add_argument("--keyword", default="three", help="keyword text, whose confusable words are found (three)")


def _clips(sample_rate: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Three 0.6 s harmonic bursts with a little noise, between stretches of silence (speech-like shape)."""
    t = np.arange(int(0.6 * sample_rate)) / sample_rate
    clips = []
    for f0 in (180.0, 185.0, 190.0):
        voiced = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8)) * np.hanning(len(t))
        x = np.concatenate([np.zeros(sample_rate // 4), 0.2 * voiced, np.zeros(sample_rate // 4)])
        clips.append((x + 1e-3 * rng.standard_normal(len(x))).astype(np.float32))
    return clips


def run(args: argparse.Namespace) -> dict:
    from kws.confusables import ConfusableConfig
    from kws.embedder import load_embedder
    from kws.enroll import enroll
    from kws.spoken import SPOKEN_DEFAULT

    embedder = load_embedder(args.model, backend=args.backend, threads=1)
    rng = np.random.default_rng(0)
    clips = _clips(embedder.sample_rate, rng)
    # Random unit vectors stand in for the impostor set: scoring cost depends only on its size.
    impostors = rng.standard_normal((args.impostors, embedder.dim)).astype(np.float32)
    confusables = None if args.no_confusables else ConfusableConfig()
    spoken = None if args.no_spoken else SPOKEN_DEFAULT
    options = dict(impostors=impostors, augment=args.augment, confusables=confusables, force=True, spoken=spoken)
    result = enroll(embedder, args.keyword, clips, **options)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        enroll(embedder, args.keyword, clips, **options)
        times.append(time.perf_counter() - start)
    ms = 1000 * np.array(times)
    figures = {
        "model_id": embedder.model_id,
        "backend": type(embedder).__name__,
        "threads": 1,
        "clips": 3,
        "augment": bool(args.augment),
        "spoken": result.keyword.info.get("spoken"),
        "impostors": args.impostors,
        "confusables": len(result.confusables),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
    }
    print(
        f"enrol {args.keyword!r} from 3 clips on 1 thread ({figures['backend']}, augment={args.augment}, "
        f"spoken={not args.no_spoken}, "
        f"{args.impostors} impostors, {figures['confusables']} confusable words): "
        f"median {figures['median_ms']:.1f} ms, p90 {figures['p90_ms']:.1f} ms over {args.repeats} runs"
    )
    return figures
