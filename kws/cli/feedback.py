"""``kws feedback``: teach a keyword from its mistakes (a false alarm, or a missed detection)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kws.bank import NEGATIVE_RULES
from kws.cli._common import add_model_arguments, embedder_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feedback",
        help="add a clip as a negative (--not) or a further positive (--is) of a keyword",
        description="Add CLIP (an event clip saved by `kws detect --save-events`, or any audio file) "
        "to a keyword of BANK: --not KEYWORD for a false alarm, --is KEYWORD for a missed or weak "
        "detection. The threshold is re-calibrated. Undo with `kws bank undo KEYWORD --bank BANK`.",
    )
    p.add_argument("clip", metavar="CLIP", help="audio file; an event clip's sidecar (.json) gives the window that fired")
    p.add_argument("--bank", required=True, metavar="BANK", help="keyword bank file (JSON)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--not", dest="negative", metavar="KEYWORD", help="CLIP is not KEYWORD (a false alarm)")
    which.add_argument("--is", dest="positive", metavar="KEYWORD", help="CLIP is KEYWORD (a missed detection)")
    p.add_argument(
        "--impostors",
        metavar="PATH",
        help="other speech for re-calibration: an impostor-set .npz or a folder of clips; default: the bundled set",
    )
    p.add_argument("--rule", choices=NEGATIVE_RULES, help="how negatives act (default: the keyword's, suppress)")
    add_model_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kws.audio import check_audio_path
    from kws.bank import KeywordBank, keyword_name, locked_bank
    from kws.impostors import impostors_from_path
    from kws.feedback import add_negative, add_positive
    from kws.scoring import FeedbackConfig

    keyword = keyword_name(args.negative or args.positive)
    KeywordBank.load(args.bank)[keyword]  # clear errors for an unknown keyword or clip before any work
    check_audio_path(args.clip)
    embedder = embedder_from_args(args)
    # The bundled set is the feedback's own to load: it depends on the keyword's window.
    impostors = None if args.impostors is None else impostors_from_path(embedder, args.impostors, exclude=keyword)
    add = add_negative if args.negative else add_positive
    with locked_bank(args.bank, model_id=embedder.model_id) as bank:
        res = add(embedder, bank, keyword, args.clip, impostors=impostors, config=FeedbackConfig(negative_rule=args.rule))

    cal = res.calibration
    kind = "negative" if args.negative else "positive"
    print(f"added {Path(args.clip).name} as a {kind} of {keyword!r} (entry {res.entry.id}; {res.how})")
    print(f"  similarity to {keyword!r}      {res.similarity:.3f}")
    print(f"  threshold                 {res.threshold_before:.3f} -> {res.threshold_after:.3f}  (set by {cal.limited_by})")
    print(f"  expected false-accept     {100 * cal.expected_far:.2f}%  (target {100 * cal.target_far:.2f}%, {cal.impostors} impostor clips)")
    if len(cal.target_scores):
        print(f"  enrolment clips below threshold {100 * cal.expected_frr:.0f}%  (leave-one-out)")
    if res.nearest is not None:
        print(f"  nearest other keyword     {res.nearest[0]!r}  cosine {res.nearest[1]:.3f}")
    print(f"  undo with: kws bank undo {keyword} {res.entry.id} --bank {args.bank}")
    return 0
