"""Detect keywords in a batch of audio files: one JSON line per detection.

    python examples/file_batch.py --bank my.json FILE...
    python examples/file_batch.py --enroll lights a.wav b.wav c.wav -- FILE...

With ``--enroll`` the keyword is taught from the clips first (add ``--save BANK``
to keep it). Each file is a stream of its own; its events are printed as they fire.
"""

from __future__ import annotations

import argparse
import json
import sys

import kws


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files to search")
    p.add_argument("--bank", help="keyword bank made by `kws enroll` or Spotter.save")
    p.add_argument("--enroll", nargs="+", metavar=("KEYWORD", "CLIP"), help="a keyword and its clips")
    p.add_argument("--save", metavar="BANK", help="save the bank after --enroll")
    p.add_argument("--model", help="model (default: the bundled one)")
    args = p.parse_args(argv)

    try:
        spotter = kws.Spotter(args.model, bank=args.bank)
        if args.enroll:
            keyword, *clips = args.enroll
            spotter.enroll(keyword, clips)
        if args.save:
            spotter.save(args.save)
        if not spotter.keywords:
            p.error("no keyword: give --bank or --enroll")
        for path in args.files:
            for event in spotter.detect(path):
                print(json.dumps({"file": path, **event.to_json()}), flush=True)
    except kws.KwsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
