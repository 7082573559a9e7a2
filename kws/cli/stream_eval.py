"""``kws stream-eval``: recall, false alarms per hour, latency and per-keyword DET curves on a long stream."""

from __future__ import annotations

import argparse
import hashlib

from kws.cli._common import (
    add_detector_arguments,
    add_model_arguments,
    detector_config_from_args,
    embedder_from_args,
    read_speaker_list,
)

SENTENCE_SPEAKERS = ("heldout", "training", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream-eval",
        help="evaluate streaming detection on a stream built from a corpus (recall, FA/h, latency, DET per keyword)",
        description="Build a stream with known keyword positions, run the detector over it once, and sweep the "
        "threshold offset: recall, false alarms per hour and latency for all keywords together, and each "
        "keyword's DET curve (miss rate against its own false alarms per hour).",
    )
    p.add_argument(
        "corpus",
        metavar="CORPUS",
        help="Speech Commands-layout corpus folder; with --sentences, the real-speech pack",
    )
    p.add_argument("--bank", required=True, help="keyword bank; its keywords must be words of the corpus")
    p.add_argument("--distractors", nargs="*", metavar="WORD", help="other words in the stream (default: every other word)")
    p.add_argument(
        "--minutes",
        type=float,
        help="stream length (default 10; with --sentences: every keyword sentence plus sentences with no "
        "keyword up to this length, default all of them)",
    )
    p.add_argument("--subset", default="testing", help="corpus subset the clips come from (default testing)")
    p.add_argument(
        "--sentences",
        action="store_true",
        help="CORPUS is the real-speech pack: stream its whole sentences (wuw2_sentences/: a keyword inside "
        "spontaneous telephone speech; librispeech_utterances/: no keyword)",
    )
    p.add_argument(
        "--speakers",
        metavar="WHO",
        help="with --sentences: heldout, training or all, whose keyword sentences (default heldout: callers kws "
        "never trains on); otherwise a FILE of speaker ids, one a line, the only voices in the stream (e.g. one "
        "half of a test set; default: every speaker of the subset)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="stream_eval", metavar="DIR", help="where the JSON and PNG go")
    p.add_argument(
        "--hops",
        metavar="FILE",
        help="keep the stream's embedded hops in FILE (.npz) and reuse them on the next run with the same "
        "stream and model: another bank is then scored in seconds",
    )
    add_detector_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kws.audio import SAMPLE_RATE
    from kws.bank import KeywordBank
    from kws.data.speech_commands import list_words
    from kws.errors import ConfigError, DataError
    from kws.streams import (
        StreamHops,
        build_sentence_stream,
        build_stream,
        embed_stream,
        evaluate_hops,
        write_report,
    )

    if args.sentences and args.speakers not in (None, *SENTENCE_SPEAKERS):
        raise ConfigError(f"with --sentences, --speakers is one of {', '.join(SENTENCE_SPEAKERS)}, not {args.speakers!r}")
    speakers = None if args.sentences else read_speaker_list(args.speakers)
    embedder = embedder_from_args(args)
    bank = KeywordBank.load(args.bank, model_id=embedder.model_id)
    cfg = detector_config_from_args(args, embedder)
    if args.sentences:
        seconds = None if args.minutes is None else args.minutes * 60
        audio, truth = build_sentence_stream(args.corpus, args.speakers or "heldout", seconds, seed=args.seed)
        source = f"sentences {Path(args.corpus).resolve()} {args.speakers or 'heldout'} {args.minutes} {args.seed}"
    else:
        distractors = args.distractors
        if distractors is None:
            distractors = [w for w in list_words(args.corpus) if w not in bank]
        minutes = 10.0 if args.minutes is None else args.minutes
        audio, truth = build_stream(args.corpus, bank.names, distractors, minutes * 60, seed=args.seed, subset=args.subset,
                                   speakers=speakers)  # fmt: skip
        source = f"corpus {Path(args.corpus).resolve()} {args.subset} {sorted(bank.names)} {sorted(distractors)} {minutes} {args.seed}"
        if speakers is not None:
            source += f" speakers {sorted(speakers)}"
    # The audio's own digest: a corpus or pack that changed under the same arguments is another stream.
    source += f" audio {hashlib.sha256(audio.tobytes()).hexdigest()[:16]}"
    source += f" hop {cfg.hop_ms} vad {cfg.vad} {cfg.vad_floor_dbfs}"
    if bank.windows != [None]:  # keywords with windows of their own are embedded at those too
        source += f" windows {bank.windows}"
    hops = None
    if args.hops and Path(args.hops).is_file():
        hops = StreamHops.load(args.hops)
        if hops.model_id != embedder.model_id or hops.source != source:
            raise DataError(f"{args.hops} holds another stream or model; delete it or give another --hops file")
    if hops is None:
        hops = embed_stream(embedder, bank, audio, cfg, source)
        if args.hops:
            hops.save(args.hops)
    report = evaluate_hops(bank, hops, truth, len(audio) / SAMPLE_RATE, cfg=cfg)
    json_path, png_path = write_report(report, args.out)
    print(f"{report['duration_s'] / 60:.1f} min stream, {report['keyword_occurrences']} keyword occurrences")
    print(f"{'offset':>7}  {'recall':>6}  {'FA/h':>7}  {'latency p50':>11}")
    for p in report["points"]:
        lat = "-" if p["latency_median_s"] is None else f"{p['latency_median_s']:.2f} s"
        print(f"{p['offset']:>+7.2f}  {p['recall']:>6.3f}  {p['fa_per_hour']:>7.1f}  {lat:>11}")
    at = min(range(len(report["points"])), key=lambda i: abs(report["points"][i]["offset"] - cfg.threshold_offset))
    print(f"each keyword alone at offset {report['points'][at]['offset']:+.2f}:")
    for name, kpts in report["per_keyword"].items():
        p = kpts[at]
        print(f"  {name:>16}  recall {p['recall']:.3f} of {p['occurrences']}  FA/h {p['fa_per_hour']:.1f}")
    fired_on = report["points"][at]["false_alarms_on"]
    if fired_on:
        print(f"false alarms at offset {report['points'][at]['offset']:+.2f}, by the word being said:")
        for name, words in fired_on.items():
            said = ", ".join(f"{w} ×{n}" for w, n in sorted(words.items(), key=lambda wn: -wn[1]))
            print(f"  {name:>16}  on {said}")
    print(f"wrote {json_path} and {png_path}")
    return 0
