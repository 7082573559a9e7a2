"""Listen on the microphone and print each keyword heard (Ctrl-C stops).

    python examples/microphone.py --bank my.json
    python examples/microphone.py --record lights      # say "lights" three times first

Devices: ``kws devices`` lists them; ``--device`` takes an index or part of a name.
"""

from __future__ import annotations

import argparse
import sys

import kws
from kws.sources import MicrophoneSource, record_clip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", help="keyword bank made by `kws enroll` or Spotter.save")
    p.add_argument("--record", metavar="KEYWORD", help="enrol KEYWORD from three recordings first")
    p.add_argument("--device", help="input device index or name part (default: the default input)")
    args = p.parse_args(argv)

    try:
        spotter = kws.Spotter(bank=args.bank)
        if args.record:
            clips = []
            for i in range(3):
                input(f"{i + 1}/3: press Enter, then say {args.record!r} ")
                clips.append(record_clip(2.0, args.device))
            spotter.enroll(args.record, clips)
        if not spotter.keywords:
            p.error("no keyword: give --bank or --record")
        print(f"listening for {', '.join(spotter.keywords)} (Ctrl-C stops)")
        for event in spotter.detect(MicrophoneSource(args.device)):
            print(f"{event.time:8.2f} s  {event.keyword}  (score {event.score:.2f})", flush=True)
    except kws.KwsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
