"""``kws stream-eval``: recall, false alarms per hour and latency on a long synthetic stream."""

from __future__ import annotations

import argparse

from kws.cli._common import add_detector_arguments, add_model_arguments, detector_config_from_args, embedder_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream-eval",
        help="evaluate streaming detection on a stream built from a corpus (recall, FA/h, latency)",
    )
    p.add_argument("corpus", metavar="CORPUS", help="Speech Commands-layout corpus folder")
    p.add_argument("--bank", required=True, help="keyword bank; its keywords must be words of the corpus")
    p.add_argument("--distractors", nargs="*", metavar="WORD", help="other words in the stream (default: every other word)")
    p.add_argument("--minutes", type=float, default=10.0, help="stream length (default 10)")
    p.add_argument("--subset", default="testing", help="corpus subset the clips come from (default testing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="stream_eval", metavar="DIR", help="where the JSON and PNG go")
    add_detector_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kws.bank import KeywordBank
    from kws.data.speech_commands import list_words
    from kws.streams import build_stream, evaluate_stream, write_report

    embedder = embedder_from_args(args)
    bank = KeywordBank.load(args.bank, model_id=embedder.model_id)
    distractors = args.distractors
    if distractors is None:
        distractors = [w for w in list_words(args.corpus) if w not in bank]
    audio, truth = build_stream(args.corpus, bank.names, distractors, args.minutes * 60, seed=args.seed, subset=args.subset)
    report = evaluate_stream(embedder, bank, audio, truth, cfg=detector_config_from_args(args))
    json_path, png_path = write_report(report, args.out)
    print(f"{report['duration_s'] / 60:.1f} min stream, {report['keyword_occurrences']} keyword occurrences")
    print(f"{'offset':>7}  {'recall':>6}  {'FA/h':>7}  {'latency p50':>11}")
    for p in report["points"]:
        lat = "-" if p["latency_median_s"] is None else f"{p['latency_median_s']:.2f} s"
        print(f"{p['offset']:>+7.2f}  {p['recall']:>6.3f}  {p['fa_per_hour']:>7.1f}  {lat:>11}")
    print(f"wrote {json_path} and {png_path}")
    return 0
