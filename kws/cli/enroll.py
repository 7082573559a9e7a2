"""``kws enroll``: teach a keyword from a few clips (files or the microphone)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kws.cli._common import add_device_arguments, add_model_arguments, embedder_from_args

if TYPE_CHECKING:
    from kws.spoken import SpokenConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enroll",
        help="enrol a keyword from a few clips into a keyword bank",
        description="Enrol KEYWORD from 1-10 clips (audio files, or --record N from the microphone) "
        "into BANK (created if missing). The threshold is calibrated on impostor speech. A keyword longer "
        "than the model's window (up to 2 s of speech, on a model over a stem) gets a window of its own.",
    )
    p.add_argument("keyword", metavar="KEYWORD")
    p.add_argument("clips", nargs="*", metavar="CLIP", help="audio files of the keyword (WAV/FLAC/OGG)")
    p.add_argument("--bank", required=True, metavar="BANK", help="keyword bank file (JSON)")
    p.add_argument("--target-far", type=float, default=0.01, metavar="P", help="false-accept rate to aim at (0.01)")
    p.add_argument(
        "--impostors",
        metavar="PATH",
        help="other speech: an impostor-set .npz, or a folder of clips (or a Speech Commands layout); "
        "default: the bundled set",
    )
    p.add_argument("--replace", action="store_true", help="replace the keyword if it is already enrolled")
    p.add_argument(
        "--force",
        action="store_true",
        help="enrol even if the calibration is hopeless (expected false-accept rate far above the target)",
    )
    p.add_argument("--centers", type=int, default=1, metavar="K", help="centers for varied samples (1)")
    p.add_argument("--augment", action="store_true", help="add lightly augmented copies of the clips")
    p.add_argument(
        "--no-confusables",
        action="store_true",
        help="do not add the keyword's confusable words (phonetic neighbours spoken by espeak-ng) as negatives",
    )
    p.add_argument(
        "--fa-per-hour",
        type=float,
        metavar="N",
        help="calibrate on running speech instead: the threshold at which the keyword fires at most N times per "
        "hour of the model's bundled background speech (with the detector's default settings); prints the "
        "recall it expects and warns, with the best budget reachable, when N cannot be met",
    )
    p.add_argument("--background", metavar="FILE", help="background stream (.npz) for --fa-per-hour (default: bundled)")
    spoken = p.add_mutually_exclusive_group()
    spoken.add_argument(
        "--spoken",
        type=int,
        nargs="?",
        const=16,
        metavar="N",
        help="the installed speech engines (espeak-ng; SVOX Pico and RHVoice if installed) say the keyword too, "
        "in N voices per source (16), and that is added to its center. On by default: across real speakers it "
        "lifts 3-shot accuracy by about 5 points, 1-shot by 10. Given (or with --say), a keyword the engines "
        "cannot say is refused; by default it is enrolled from its clips alone, with a warning",
    )
    spoken.add_argument(
        "--no-spoken",
        action="store_true",
        help="from the clips alone (on the enroller's own voice it finds about 2%% more of their keywords at the "
        "default offset)",
    )
    p.add_argument("--say", metavar="TEXT", help="what the speech engines say (default: KEYWORD), e.g. 'hey kay'")
    p.add_argument("--record", type=int, metavar="N", help="record N clips from the microphone instead of files")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each recording (2.0 s)")
    add_device_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=_run)


def _level_meter(rms: float) -> None:
    import math

    db = 20 * math.log10(max(rms, 1e-6))
    bars = int(max(0.0, min(1.0, (db + 60) / 60)) * 30)
    print(f"\r  level [{'#' * bars}{' ' * (30 - bars)}] {db:6.1f} dBFS", end="", file=sys.stderr, flush=True)


def _record(args: argparse.Namespace) -> tuple[list, list[str]]:
    from kws.sources import check_format, find_device, record_clip

    # A device that does not exist, or settings no device has, are refused before the first prompt.
    check_format(args.rate, args.channels, "audio device")
    find_device(args.device)
    clips = []
    for i in range(args.record):
        input(f"Clip {i + 1}/{args.record}: press Enter, then say {args.keyword!r} ")
        clips.append(record_clip(args.seconds, args.device, args.rate, args.channels, on_level=_level_meter))
        print(file=sys.stderr)
    return clips, [f"recording {i + 1}" for i in range(args.record)]


def _spoken(args: argparse.Namespace) -> SpokenConfig | None:
    """The engines' voices as asked: asked for by name (``--spoken``, ``--say``), a keyword they cannot say is refused."""
    from dataclasses import replace

    from kws.spoken import SPOKEN_DEFAULT

    if args.no_spoken:
        return None
    if args.spoken is None and args.say is None:
        return SPOKEN_DEFAULT
    voices = SPOKEN_DEFAULT.voices if args.spoken is None else args.spoken
    return replace(SPOKEN_DEFAULT, voices=voices, required=True)


def _run(args: argparse.Namespace) -> int:
    from kws.audio import load_audio
    from kws.bank import KeywordBank, keyword_name, locked_bank
    from kws.background import load_background
    from kws.confusables import ConfusableConfig
    from kws.enroll import enroll
    from kws.errors import EnrollmentError

    if args.record is not None and args.clips:
        raise EnrollmentError("give clip files or --record N, not both")
    if args.record is None and not args.clips:
        raise EnrollmentError("give the keyword's clip files, or --record N to record them")
    if args.record is None and (args.device, args.rate, args.channels) != (None, None, None):
        raise EnrollmentError("--device, --rate and --channels apply to --record N only")
    if args.say is not None and args.no_spoken:
        raise EnrollmentError("--say is what the speech engines say: it does not go with --no-spoken")
    name = keyword_name(args.keyword)
    bank_path = Path(args.bank)
    # The bank as it is now, to check early and to name similar keywords; it is read
    # again under its lock when the keyword is added, so that another process's
    # change made meanwhile is kept.
    bank = KeywordBank.load(bank_path) if bank_path.exists() else None
    if bank is not None and name in bank and not args.replace:
        raise EnrollmentError(f"{name!r} is already in {bank_path}; pass --replace to enrol it again")
    embedder = embedder_from_args(args)
    if bank is not None:
        bank = KeywordBank.load(bank_path, model_id=embedder.model_id)

    if args.record is not None:
        clips, names = _record(args)
    else:
        clips = [load_audio(c, embedder.sample_rate) for c in args.clips]
        names = [str(c) for c in args.clips]
    background = None
    if args.fa_per_hour is not None:
        background = load_background(embedder, args.background)
    result = enroll(
        embedder,
        name,
        clips,
        impostors=args.impostors,
        target_far=args.target_far,
        centers=args.centers,
        augment=args.augment,
        bank=bank,
        clip_names=names,
        force=args.force,
        confusables=None if args.no_confusables else ConfusableConfig(),
        fa_per_hour=args.fa_per_hour,
        background=background,
        spoken=_spoken(args),
        say=args.say,
    )
    with locked_bank(bank_path, model_id=embedder.model_id, dim=embedder.dim) as current:
        if name in current and not args.replace:
            raise EnrollmentError(f"{name!r} was enrolled in {bank_path} meanwhile; pass --replace to enrol it again")
        current.add(result.keyword, replace=args.replace)

    cal = result.calibration
    print(f"enrolled {name!r} from {result.keyword.samples} clip(s) into {bank_path}")
    spoken = result.keyword.info.get("spoken")
    if spoken is not None:
        print(f"  spoken               {spoken['text']!r} by {spoken['voices']} voices of {', '.join(spoken['sources'])}")
    window = result.keyword.info.get("window")
    if window is not None:
        print(
            f"  window               {window['seconds']:.2f} s ({window['frames']} stem frames; longer than the "
            f"model's, to hold the keyword; impostors at the {window['impostors_at']})"
        )
    if result.budget is not None:
        b = result.budget
        print(f"  threshold            {result.threshold:.3f}  (fires at {b.fire_threshold:.3f} with the default offset)")
        print(
            f"  expected false alarms {b.expected_fa_per_hour:.2f} per hour  (budget {b.fa_per_hour:g}; "
            f"{60 * b.background_hours:.0f} min of background speech)"
        )
        if b.expected_recall == b.expected_recall:  # NaN with one clip: nothing to expect from
            print(f"  expected recall      {100 * b.expected_recall:.0f}%  (enrolment clips, leave-one-out)")
    else:
        set_by = "impostors" if cal.limited_by == "far" else "enrolment clips"
        print(f"  threshold            {cal.threshold:.3f}  (set by {set_by})")
        print(
            f"  expected false-accept {100 * cal.expected_far:.2f}%  "
            f"(target {100 * cal.target_far:.2f}%, {cal.impostors} impostor clips)"
        )
        if len(cal.target_scores):
            print(f"  enrolment clips below threshold {100 * cal.expected_frr:.0f}%  (leave-one-out)")
    if result.nearest is not None:
        print(f"  nearest other keyword {result.nearest[0]!r}  cosine {result.nearest[1]:.3f}")
    if result.confusables:
        print(f"  confusable words kept as negatives ({len(result.confusables)}; cosine to {name!r}, spoken by espeak-ng):")
        print("    " + ", ".join(f"{n.word} {sim:.2f}" for n, sim in result.confusables))
    for w in result.warnings:
        print(f"  warning: {w}")
    return 0
