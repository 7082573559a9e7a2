"""Call a function when a keyword is heard, as a Home Assistant automation would be triggered.

    python examples/home_assistant.py --bank my.json --webhook http://homeassistant.local:8123/api/webhook/ID
    python examples/home_assistant.py --bank my.json recording.wav      # a file instead of the microphone

Each event is POSTed as JSON to the webhook (a Home Assistant webhook trigger), or
printed when no ``--webhook`` is given. For Home Assistant's own voice pipeline,
``kws serve`` speaks its Wyoming protocol instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

import kws
from kws.events import Event


def on_keyword(webhook: str | None):
    """The callback: what to do when a keyword fires."""

    def call(event: Event) -> None:
        body = json.dumps(event.to_json()).encode()
        if webhook is None:
            print(body.decode(), flush=True)
            return
        request = urllib.request.Request(webhook, data=body, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except OSError as exc:  # a webhook that is down must not stop the listening
            print(f"webhook failed: {exc}", file=sys.stderr)

    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", nargs="?", help="audio file (default: the microphone)")
    p.add_argument("--bank", required=True, help="keyword bank made by `kws enroll` or Spotter.save")
    p.add_argument("--webhook", help="URL to POST each event to")
    args = p.parse_args(argv)

    try:
        spotter = kws.Spotter(bank=args.bank)
        for _ in spotter.detect(args.source, callback=on_keyword(args.webhook)):
            pass  # the callback has done the work
    except kws.KwsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
