"""``kws download``: fetch Google Speech Commands (checksum-verified, resumable)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download and extract Google Speech Commands v1 or v2",
        description=(
            "Download the official Speech Commands archive (v1: ~1.4 GB, v2: ~2.4 GB) into OUT, "
            "verify its SHA-256, and extract it to OUT/speech_commands_v0.0N. An interrupted download "
            "resumes; a corpus already extracted is not downloaded again."
        ),
    )
    p.add_argument("--version", type=int, choices=(1, 2), default=2, help="dataset version (default: 2)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to download and extract into")
    p.add_argument("--url", metavar="URL", help="mirror of the official archive (default: download.tensorflow.org)")
    p.add_argument("--sha256", metavar="HEX", help="expected SHA-256 (default: the official archive's)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kws.data.speech_commands import download_speech_commands

    root = download_speech_commands(args.version, Path(args.out), url=args.url, progress=not args.quiet,
                                    sha256=args.sha256)  # fmt: skip
    print(root)
    return 0
