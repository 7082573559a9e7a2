"""``kws synth``: make a synthetic keyword corpus (Speech Commands layout) with speech engines."""

from __future__ import annotations

import argparse
import json

_ENGINES_FOUND = "(engines found on this machine)"  # epilog placeholder, filled only when help is shown


class _HelpWithEngines(argparse.HelpFormatter):
    """Lists the speech engines installed here in the epilog, one per line; looking for
    them costs a few file checks, so it is done when help is printed, not on every ``kws`` start."""

    def add_text(self, text: str | None) -> None:
        if text == _ENGINES_FOUND:
            self._add_item(lambda listing: listing + "\n", [_describe_engines(self._width)])
        else:
            super().add_text(text)


def _describe_engines(width: int) -> str:
    import textwrap

    from kws.data.synth import ENGINES, installed_engines

    found = installed_engines()
    lines = ["speech engines (--engines), as found on this machine:"]
    for name, e in ENGINES.items():
        voices = ", ".join(found[name]) if name in found else f"NOT INSTALLED ({e.install})"
        lines += textwrap.wrap(f"{name}: {voices}. Licence: {e.licence}", width, initial_indent="  ",
                               subsequent_indent="      ")  # fmt: skip
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise a keyword corpus with speech engines (espeak-ng and others; Speech Commands layout)",
        description=(
            "Speak every word of a vocabulary in many synthetic voices (by default espeak-ng English voices x "
            "voice variants x speed x pitch; --engines adds SVOX Pico, RHVoice, MBROLA and Piper voices) and "
            "write 1 s 16 kHz clips as OUT/<word>/<speaker>_nohash_0.wav, validation_list.txt / "
            "testing_list.txt split by speaker, _background_noise_/ (white, pink, brown noise and babble) and "
            "README.md (engines, voices, licences). Re-running the same command resumes."
        ),
        epilog=_ENGINES_FOUND,
        formatter_class=_HelpWithEngines,
    )
    words = p.add_mutually_exclusive_group(required=True)
    words.add_argument("--words", metavar="W1,W2,...", help="comma-separated words, e.g. yes,no,up")
    words.add_argument(
        "--vocab",
        metavar="NAME|FILE",
        help="bundled vocabulary (speech_commands: the 35 Speech Commands words; train: 3,000 frequent "
        "English words) or a text file with one word per line",
    )
    p.add_argument("--max-words", type=int, metavar="N", help="only the first N words of the vocabulary")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (empty, or a corpus to resume)")
    p.add_argument("--speakers", type=int, default=120, metavar="N", help="synthetic speakers (default: 120)")
    p.add_argument("--seed", type=int, default=0, help="random seed for speakers, splits and noise (default: 0)")
    p.add_argument(
        "--accents",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of speakers given a non-English espeak-ng voice (German, Dutch, Afrikaans, French, "
        "Portuguese, Polish, Welsh) reading the English words: accented speech (default: 0)",
    )
    p.add_argument(
        "--engines",
        default="espeak-ng",
        metavar="E1,E2,...|all",
        help="speech engines sharing the speakers equally: espeak-ng, pico, rhvoice, piper, mbrola; 'all' = every "
        "one installed here except mbrola (default: espeak-ng). MBROLA voices are licensed for non-commercial "
        "use only, so a model trained on them may not ship in a product that is sold: they are used only when "
        "named here. The engines found on this machine are listed below",
    )
    p.add_argument("--workers", type=int, metavar="N", help="parallel processes (default: all cores)")
    p.add_argument(
        "--noise-seconds", type=float, default=60.0, metavar="S", help="length of each noise file (default: 60)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kws.data.synth import SynthConfig, load_vocab, resolve_engines, synthesize, validate_words
    from kws.errors import DataError

    if args.words is not None:
        words = validate_words([w for w in args.words.split(",") if w.strip()], "--words")
    else:
        words = load_vocab(args.vocab)
    if args.max_words is not None:
        if args.max_words < 1:
            raise DataError("--max-words must be at least 1")
        words = words[: args.max_words]
    if args.workers is not None and args.workers < 1:
        raise DataError("--workers must be at least 1")
    cfg = SynthConfig(
        words=tuple(words), speakers=args.speakers, seed=args.seed, noise_seconds=args.noise_seconds,
        accents=args.accents, engines=resolve_engines(args.engines), workers=args.workers,
    )  # fmt: skip
    report = synthesize(cfg, Path(args.out), progress=not args.quiet)
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] and not report["written"] and not report["skipped"] else 0
