"""``kws bench``: speed, memory and throughput figures (not tests)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from kws.bench import benchmarks

    p = sub.add_parser("bench", help="run benchmarks and print figures and ratios")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name, module in benchmarks().items():
        bp = bsub.add_parser(name, help=module.HELP)
        module.add_arguments(bp)
        bp.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
        bp.set_defaults(func=_run, module=module)


def _run(args: argparse.Namespace) -> int:
    from kws.fileio import write_json

    figures = args.module.run(args)
    if args.json:
        write_json(args.json, figures)
    return 0
