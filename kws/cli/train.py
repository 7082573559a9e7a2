"""``kws train``: train the embedding encoder from a TOML config (one process, or torchrun)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the embedding encoder (metric learning) from a TOML config",
        description=(
            "Train the encoder with batch-hard triplet, center and classifier losses on a corpus in "
            "Speech Commands layout, logging per-epoch metrics (loss terms, few-shot accuracy on "
            "held-out words, EER) to OUT/metrics.csv and OUT/metrics.jsonl and saving OUT/last.pt and "
            "OUT/best.pt. For several GPUs or processes: "
            "torchrun --standalone --nproc_per_node=N -m kws train --config FILE"
        ),
    )
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (TOML syntax), e.g. --set train.epochs=5 --set 'data.words=[\"yes\",\"no\"]'",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (overrides train.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    p.add_argument("--print-config", action="store_true",
                   help="print the full resolved config (defaults, then FILE, then the overrides) as TOML and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    from kws.train import train
    from kws.train_config import load_config

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={_toml_string(args.out)}")
    if args.device:
        overrides.append(f"train.device={_toml_string(args.device)}")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"training into {cfg.train.out_dir}", flush=True)
    final = train(cfg, resume=args.resume, progress=not args.quiet, on_epoch=_print_epoch)
    if final:
        print(f"done: {cfg.train.out_dir}/best.pt (best held-out accuracy), {cfg.train.out_dir}/last.pt", flush=True)
    return 0


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _print_epoch(row: dict) -> None:
    parts = [f"epoch {row['epoch']:3d}"]
    if "loss" in row:
        parts.append(f"loss {row['loss']:.4f}")
    parts += [f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_")]
    for key, label in (("train_acc", "train-acc"), ("seen_acc", "seen-acc")):
        if key in row:
            parts.append(f"{label} {row[key]:.3f}")
    for key, value in row.items():
        # fewshot_3 (scratch) or real_fewshot_3 / synthetic_fewshot_3 (a head over a stem)
        source, _, shot = key.rpartition("fewshot_")
        if _ and not key.endswith("ci95"):
            parts.append(f"{source.replace('_', ' ')}{shot}-shot {value:.3f}")
        elif key.endswith("eer"):
            parts.append(f"{key[:-3].replace('_', ' ')}EER {value:.3f}")
    if "clips_per_s" in row:
        parts.append(f"{row['clips_per_s']:.0f} clips/s, {row['epoch_time_s']:.0f} s")
    print(" | ".join(parts), flush=True)
