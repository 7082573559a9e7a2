"""``kws devices``: list audio input devices."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list audio input devices (for `kws detect --device`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kws.sources import list_devices

    devices = list_devices()
    if not devices:
        print("no audio input devices found")
        return 1
    print(f"{'':2}{'index':>5}  {'channels':>8}  {'rate':>7}  {'host API':<10}  name")
    for d in devices:
        mark = "*" if d.default else ""
        print(f"{mark:2}{d.index:>5}  {d.channels:>8}  {d.default_rate:>7.0f}  {d.hostapi:<10}  {d.name}")
    print("(* default input device)")
    return 0
