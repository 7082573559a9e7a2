"""``kws bench synth``: synthetic clips per second per speech engine, one worker and all cores."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

NAME = "synth"
HELP = "synthetic corpus speed: clips/second per speech engine with one worker process and with all cores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--words", type=int, default=10, metavar="N", help="Speech Commands words (default: 10)")
    parser.add_argument("--speakers", type=int, default=20, metavar="N", help="synthetic speakers (default: 20)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="workers for the parallel run (default: all cores)")  # fmt: skip
    parser.add_argument("--engines", metavar="E1,E2,...", help="speech engines (default: every one installed here)")


def run(args: argparse.Namespace) -> dict:
    from kws.data.synth import SynthConfig, check_engines, installed_engines, load_vocab, synthesize

    engines = [e.strip() for e in args.engines.split(",")] if args.engines else list(installed_engines())
    check_engines(engines)
    words = tuple(load_vocab("speech_commands")[: args.words])
    figures: dict = {"clips": len(words) * args.speakers}
    for engine in engines:
        for workers in dict.fromkeys((1, args.workers)):
            cfg = SynthConfig(words=words, speakers=args.speakers, noise_seconds=1.0, engines=(engine,),
                              workers=workers)  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                report = synthesize(cfg, Path(tmp) / "corpus", progress=False)
            rate = report["written"] / report["seconds"]
            figures.setdefault(engine, {})[f"workers_{workers}"] = {
                "clips_per_s": round(rate, 1),
                "clips_per_s_per_worker": round(rate / workers, 1),
                "seconds": report["seconds"],
                "failed": report["failed"],
            }
            print(f"{engine:>10} {workers:3d} worker(s): {rate:7.1f} clips/s ({rate / workers:.1f} per worker), "
                  f"{report['written']} clips in {report['seconds']:.1f} s")  # fmt: skip
    return figures
