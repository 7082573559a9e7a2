"""``kws demo``: the main job on bundled data — one real speaker enrols three keywords, then speaks a stream."""

from __future__ import annotations

import argparse

from kws.cli._common import add_detector_arguments, add_model_arguments, detector_config_from_args, embedder_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="enrol three keywords from one real speaker's bundled takes and detect them in their stream",
        description="Enrol 'open', 'close' and 'speaker' from three bundled takes each of one real speaker "
        "(DSPSpeech-20, MIT licence, (c) 2019 Zhongyu Chen), build a stream of that speaker's other takes "
        "of them among five other words of theirs ('speech', alike 'speaker', 'signal', 'process', "
        "'project', 'print'), run the streaming detector over it and compare the events with the known "
        "keyword times. The speaker is held out of the default model's training; the words are not "
        "(other DSPSpeech-20 speakers say them there).",
    )
    p.add_argument("--minutes", type=float, default=1.0, help="length of the generated stream (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream (default 0)")
    p.add_argument("--bank", metavar="PATH", help="also save the demo's bank here (for `kws detect`)")
    p.add_argument("--no-spoken", action="store_true", help="enrol from the clips alone (kws enroll --no-spoken)")
    p.add_argument("--make-assets", metavar="PACK", help=argparse.SUPPRESS)  # rebuilds kws/assets/demo from the real-speech pack
    add_detector_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kws.demo import make_demo_assets, run_demo

    if args.make_assets:
        print(f"wrote {make_demo_assets(args.make_assets)}")
        return 0
    embedder = embedder_from_args(args)
    print(f"model {embedder.model_id} ({type(embedder).__name__}, {embedder.dim}-d embeddings)")
    cfg = detector_config_from_args(args, embedder)
    from kws.spoken import SPOKEN_DEFAULT

    result = run_demo(embedder, bank_path=args.bank, minutes=args.minutes, seed=args.seed, cfg=cfg,
                      spoken=None if args.no_spoken else SPOKEN_DEFAULT)  # fmt: skip
    offset = cfg.threshold_offset
    print(f"\nenrolled (3 clips each; in a stream each threshold is raised by {offset:+.2f}):")
    for r in result.enrolled:
        near = f", nearest {r.nearest[0]!r} at cosine {r.nearest[1]:.2f}" if r.nearest else ""
        print(f"  {r.keyword.name:<8} threshold {r.threshold:.3f}{near}")
        for w in r.warnings:
            print(f"           note: {w}")
    print(f"\nstream: {result.stream_seconds:.0f} s, {len(result.truth)} words, "
          f"{sum(t.keyword for t in result.truth)} of them keywords")
    truth_iter = sorted(result.truth, key=lambda t: t.start)
    print("\nevents:")
    for ev in result.events:
        spoken = [t.word for t in truth_iter if t.start < ev.time < t.end + 1.0]
        print(f"  {ev.time:7.2f} s  {ev.keyword:<8} score {ev.score:.3f}   (words in window: {', '.join(spoken) or '-'})")
    lat = sorted(result.latencies)
    median = f", median event time {1000 * lat[len(lat) // 2]:+.0f} ms from the end of the word" if lat else ""
    print(f"\nsummary: {result.hits} hits, {result.misses} misses, {result.false_alarms} false alarms{median}")
    if args.bank:
        print(f"bank saved to {args.bank}; try: kws detect FILE --bank {args.bank}")
    return 0
