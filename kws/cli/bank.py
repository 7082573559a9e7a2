"""``kws bank``: list, show, remove and rename enrolled keywords; undo feedback."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bank", help="list, show, remove or rename keywords in a keyword bank")
    bsub = p.add_subparsers(dest="bank_command", metavar="ACTION", required=True)
    actions = {
        "list": ("list the enrolled keywords", []),
        "show": ("show one keyword's details and calibration", ["keyword"]),
        "remove": ("remove a keyword", ["keyword"]),
        "rename": ("rename a keyword", ["old", "new"]),
        "undo": ("undo a keyword's latest feedback entry (see `kws bank show`)", ["keyword"]),
    }
    for name, (help_text, positionals) in actions.items():
        ap = bsub.add_parser(name, help=help_text)
        for pos in positionals:
            ap.add_argument(pos, metavar=pos.upper())
        if name == "undo":
            ap.add_argument("entry", nargs="?", type=int, metavar="ENTRY", help="entry id; must be the latest (default)")
        ap.add_argument("--bank", required=True, metavar="BANK", help="keyword bank file")
        ap.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kws.bank import KeywordBank, locked_bank

    if args.bank_command in ("remove", "undo", "rename"):
        with locked_bank(args.bank) as bank:
            done = _change(args, bank)
        print(done)
        return 0
    bank = KeywordBank.load(args.bank)
    if args.bank_command == "list":
        print(f"{args.bank}: {len(bank)} keyword(s), model {bank.model_id}, dim {bank.dim}")
        if len(bank):
            width = max(len(n) for n in bank.names)
            print(f"  {'keyword':<{width}}  threshold  clips  centers  window")
            for kw in bank.keywords.values():
                print(f"  {kw.name:<{width}}  {kw.threshold:9.3f}  {kw.samples:5d}  {len(kw.centers):7d}  {_window(kw)}")
    elif args.bank_command == "show":
        kw = bank[args.keyword]
        print(f"{kw.name}: threshold {kw.threshold:.3f}, {kw.samples} clip(s), {len(kw.centers)} center(s), "
              f"window {_window(kw)}")  # fmt: skip
        print(json.dumps(kw.info, indent=2))
        rule = f", negatives {kw.negative_rule}" if kw.negatives is not None else ""
        print(f"feedback: {len(kw.history)} entr{'y' if len(kw.history) == 1 else 'ies'}{rule}")
        for e in kw.history:
            windows = f"{len(e.embeddings)} window{'s' if len(e.embeddings) > 1 else ''}"
            print(f"  {e.id:3d}  {e.kind:<8}  {e.added}  {e.source}  ({windows})")
    return 0


def _window(kw) -> str:
    """A keyword's window as listed: the model's, or its own in stem frames (a keyword longer than the model's)."""
    return "model's" if kw.frames is None else f"{kw.frames} stem frames"


def _change(args: argparse.Namespace, bank) -> str:
    """``remove``, ``undo`` or ``rename`` on ``bank`` (the caller holds its lock and saves it);
    returns what to tell the user once it is saved."""
    if args.bank_command == "remove":
        return f"removed {bank.remove(args.keyword).name!r} from {args.bank}"
    if args.bank_command == "undo":
        from kws.feedback import undo

        entry = undo(bank, args.keyword, args.entry)
        kw = bank[args.keyword]
        return f"undid entry {entry.id} of {kw.name!r} ({entry.kind}, {entry.source}); threshold now {kw.threshold:.3f}"
    bank.rename(args.old, args.new)
    return f"renamed {args.old!r} to {bank[args.new].name!r} in {args.bank}"
