"""``kws bench frontend``: log-mel throughput on one CPU thread, and augmentation cost.

Log-mel frames per second for training-size batches of 1 s clips and for
streaming-size chunks (one hop of new audio plus the window overlap, batch 1),
then milliseconds per batch of :class:`kws.data.augment.Augmenter` with all
effects at their default probabilities and three 60 s noise recordings.
"""

from __future__ import annotations

import argparse
import time

NAME = "frontend"
HELP = "log-mel frames/second on one CPU thread (batches and streaming chunks); augmentation ms/batch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kws.detect import DetectorConfig

    parser.add_argument("--batch", type=int, default=128, metavar="N", help="clips per training batch (default: 128)")
    parser.add_argument("--hop-ms", type=float, default=DetectorConfig.hop_ms, metavar="MS",
                        help="streaming hop (default: %(default)g)")
    parser.add_argument("--n-mels", type=int, metavar="N", help="mel bands (default: the front-end's)")
    parser.add_argument("--seconds", type=float, default=3.0, metavar="S", help="time per measurement (default: 3)")
    parser.add_argument(
        "--augment-threads", type=int, default=1, metavar="N", help="threads for augmentation (default: 1)"
    )


def _rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after a warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from kws.data.augment import AugmentConfig, Augmenter
    from kws.data.synth import colored_noise
    from kws.features import FrontendConfig, LogMel

    torch.set_num_threads(1)
    cfg = FrontendConfig() if args.n_mels is None else FrontendConfig(n_mels=args.n_mels)
    frontend = LogMel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    hop = int(args.hop_ms * cfg.sample_rate / 1000)
    cases = {
        f"batch {args.batch} x 1 s": torch.randn(args.batch, cfg.sample_rate, generator=g) * 0.1,
        "batch 1 x 1 s window": torch.randn(1, cfg.sample_rate, generator=g) * 0.1,
        f"stream chunk ({args.hop_ms:g} ms hop)": torch.randn(1, hop + cfg.n_fft - cfg.hop_length, generator=g) * 0.1,
    }
    figures: dict = {"threads": 1, "n_mels": cfg.n_mels}
    print(f"log-mel ({cfg.n_mels} mels, 25 ms / 10 ms), 1 thread:")
    with torch.inference_mode():
        for name, x in cases.items():
            frames = x.shape[0] * cfg.num_frames(x.shape[1])
            calls = _rate(lambda: frontend(x), args.seconds)
            figures[name] = {"frames_per_s": round(calls * frames), "ms_per_call": round(1000 / calls, 3)}
            print(f"  {name:28s} {calls * frames:12,.0f} frames/s  {1000 / calls:8.3f} ms/call"
                  f"  ({calls * frames * cfg.hop_length / cfg.sample_rate:,.0f}x real time)")  # fmt: skip

    torch.set_num_threads(args.augment_threads)
    rng = np.random.default_rng(0)
    noises = [colored_noise(kind, 60 * cfg.sample_rate, rng) for kind in ("white", "pink", "brown")]
    aug = Augmenter(AugmentConfig(), noises).train()
    batch = torch.randn(args.batch, cfg.sample_rate, generator=g) * 0.1
    calls = _rate(lambda: aug(batch, g), args.seconds)
    figures["augment"] = {"threads": args.augment_threads, "batch": args.batch, "ms_per_batch": round(1000 / calls, 2)}
    print(f"augmentation, {args.augment_threads} threads: {1000 / calls:.1f} ms per batch of {args.batch} x 1 s")
    return figures
