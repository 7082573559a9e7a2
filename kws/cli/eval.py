"""``kws eval``: few-shot, open-set and minimal-pair evaluation of a model on a corpus,
or (``--twelve-class``) the Speech Commands 12-class benchmark."""

from __future__ import annotations

import argparse

from kws.cli._common import add_model_arguments, embedder_from_args, read_speaker_list


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    values = _int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return values[0]


def _pair(text: str) -> tuple[str, str]:
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"a pair reads WORD:WORD, got {text!r}")
    return parts[0], parts[1]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a Speech Commands-layout corpus (few-shot, open-set, minimal pairs)",
        description="Embed a corpus split and report N-way K-shot accuracy, open-set detection "
        "(EER, FRR at 1%% and 5%% FAR, DET curve), minimal-pair confusion and a 2-D projection. "
        "Writes report.json and PNG plots into --out. With --twelve-class, scores the Speech Commands "
        "12-class task instead (ten command words, _unknown_, _silence_) with a classifier built from the "
        "--reference corpus: with zero real examples and with K real clips per word (--shots, --draws); "
        "writes twelve_class.json and confusion-matrix PNGs.",
    )
    p.add_argument("corpus", metavar="CORPUS", help="corpus root (Speech Commands layout)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for report.json and plots")
    p.add_argument("--words", nargs="+", metavar="WORD", help="words to evaluate on (default: all)")
    p.add_argument(
        "--subset",
        choices=("training", "validation", "testing", "all"),
        help="split of CORPUS to score (default: testing; all in 12-class mode, whose test layout has no split lists)",
    )
    p.add_argument("--shots", type=_int_list, metavar="K,K", help="K of the episodes (1,3,5)")
    p.add_argument("--ways", type=int, default=10, metavar="N", help="N of the episodes (10)")
    p.add_argument("--episodes", type=int, default=300, metavar="N", help="episodes per K (300)")
    p.add_argument("--open-set-episodes", type=int, default=100, metavar="N", help="open-set episodes (100)")
    p.add_argument(
        "--open-set-shots", type=_positive, default=3, metavar="K", help="enrolment clips per word in the open-set test (3)"
    )
    p.add_argument(
        "--open-set-unknown",
        action="store_true",
        help="in the open-set test, also score the corpus's other words (folders not in --words, and _unknown_) "
        "against every enrolled word, as impostors",
    )
    p.add_argument("--pairs", nargs="+", type=_pair, metavar="A:B", help="minimal pairs (default: closest pairs)")
    p.add_argument(
        "--same-speakers",
        action="store_true",
        help="allow queries from the support clips' speakers (default: other speakers only)",
    )
    p.add_argument(
        "--augment-episodes",
        type=int,
        default=0,
        metavar="N",
        help="also compare enrolment with and without augmentation over N episodes",
    )
    p.add_argument(
        "--spoken",
        type=int,
        nargs="?",
        const=16,
        default=0,
        metavar="N",
        help="add each word as the installed speech engines say it (N voices per source, 16) to its enrolment "
        "center in the few-shot and open-set figures, as kws enroll does by default (without it: the clips "
        "alone, as kws enroll --no-spoken)",
    )
    p.add_argument(
        "--impostors",
        metavar="PATH",
        help="with --spoken: other words' speech whose mean the engines' voices leave out, an impostor-set .npz "
        "or a folder of clips, as for kws enroll (default: the model's bundled set)",
    )
    p.add_argument(
        "--no-centre",
        dest="centre",
        action="store_false",
        help="embed clips as they are (default: trim silence and centre the speech, as enrolment does)",
    )
    p.add_argument(
        "--twelve-class",
        action="store_true",
        help="run the Speech Commands 12-class benchmark instead (needs --reference; --shots default 1,3,5,10)",
    )
    p.add_argument(
        "--reference",
        metavar="DIR",
        nargs="+",
        help="12-class mode: the corpus (e.g. the synthetic one) whose words, validation speakers and "
        "background noise build the classifier; several are read as one (a word's clips of each in one class, "
        "each corpus weighing the same in its prototype)",
    )
    p.add_argument("--draws", type=int, default=10, metavar="N", help="12-class mode: draws per K (10)")
    p.add_argument(
        "--clean-validation",
        dest="augment_validation",
        action="store_false",
        help="12-class mode: fit the _unknown_/_silence_ biases on the clean reference validation clips "
        "(default: with noise, reverberation and channel effects added)",
    )
    p.add_argument(
        "--speakers",
        metavar="FILE",
        help="score only the speakers listed in FILE, one id a line (e.g. the choose or report half of a test set)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_model_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.twelve_class:
        return _run_twelve_class(args)
    from kws.errors import ConfigError
    from kws.evaluate import EvalConfig, evaluate, format_table

    if args.impostors is not None and not args.spoken:
        raise ConfigError("--impostors goes with --spoken (the other words the speech engines' voices are set against)")
    words = [w for item in args.words for w in item.split(",") if w] if args.words else None
    cfg = EvalConfig(
        subset=args.subset or "testing",
        words=words,
        shots=args.shots or (1, 3, 5),
        ways=args.ways,
        episodes=args.episodes,
        open_set_episodes=args.open_set_episodes,
        open_set_shots=args.open_set_shots,
        open_set_unknown=args.open_set_unknown,
        pairs=args.pairs,
        across_speakers=not args.same_speakers,
        augment_episodes=args.augment_episodes,
        spoken_voices=args.spoken,
        impostors=args.impostors,
        seed=args.seed,
        centre=args.centre,
        speakers=read_speaker_list(args.speakers),
    )
    report = evaluate(embedder_from_args(args), args.corpus, cfg, args.out)
    print(format_table(report))
    print(f"report and plots in {args.out}")
    return 0


def _run_twelve_class(args: argparse.Namespace) -> int:
    from kws.errors import ConfigError
    from kws.twelve_class import TwelveClassConfig, evaluate_twelve_class, format_twelve_class

    if not args.reference:
        raise ConfigError("--twelve-class needs --reference DIR (the corpus that builds the classifier)")
    if args.draws < 1:
        raise ConfigError(f"--draws must be at least 1, got {args.draws}")
    if args.words:
        raise ConfigError("--twelve-class scores the ten Speech Commands words; --words does not apply")
    few_shot_only = [f for f, on in (("--spoken", args.spoken), ("--impostors", args.impostors),
                                     ("--open-set-unknown", args.open_set_unknown)) if on]  # fmt: skip
    if few_shot_only:
        raise ConfigError(f"{', '.join(few_shot_only)}: not for --twelve-class (its classifier has no enrolment)")
    cfg = TwelveClassConfig(
        subset=args.subset or "all",
        shots=args.shots or (1, 3, 5, 10),
        draws=args.draws,
        centre=args.centre,
        augment_validation=args.augment_validation,
        seed=args.seed,
        speakers=read_speaker_list(args.speakers),
    )
    report = evaluate_twelve_class(embedder_from_args(args), args.corpus, args.reference, cfg, args.out)
    print(format_twelve_class(report))
    print(f"report and confusion matrices in {args.out}")
    return 0
