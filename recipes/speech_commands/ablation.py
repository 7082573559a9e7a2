"""Loss ablation: the same corpus, encoder, seed and epoch budget, one loss setting per run.

    python recipes/speech_commands/ablation.py --data data/synth --epochs 5 --out runs/ablation \
        [--variants triplet circle ...] [--set section.key=value ...]

Runs every metric loss alone (``kws.losses.METRIC_LOSSES``), center loss alone,
the classifier (CE) alone, every metric loss as ``0.1 · metric + CE``, and the
recipe's default joint loss — each with recipes/speech_commands/config.toml plus
the overrides — then writes ``ablation.md`` (a Markdown table) and
``ablation.json`` in ``--out``. Per run: 10-way 1- and 3-shot accuracy on the
held-out words spoken by testing speakers (unseen in training), open-set EER,
the error rate on minimal pairs (held-out words one phoneme apart, from
espeak-ng, in 2-way episodes at ``eval.best_shot`` shots), and training time.
Figures are those of the best epoch (by ``eval.best_shot``-shot accuracy, the
epoch ``best.pt`` holds). A finished variant (its folder has ``metrics.jsonl``
with the full epoch count) is not re-run. ``--list`` prints the variants. To
compare samplers, run it again with ``--set train.sampler="hard_class"`` and
another ``--out``; to give OIM's queue unlabelled speech, with ``--set
data.unlabelled_root="CORPUS" --set train.unlabelled=N`` (a corpus of other words).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kws.fileio import atomic_path, write_json
from kws.losses import METRIC_LOSSES
from kws.train import train
from kws.train_config import TrainConfig, load_config, resolve_words

log = logging.getLogger(__name__)

CONFIG = Path(__file__).with_name("config.toml")
COLUMNS = ("seen_acc", "fewshot_1", "fewshot_3", "eer", "minimal_pair_error")
HEADERS = ("seen-word acc", "1-shot", "3-shot", "EER", "minimal-pair error")


@dataclass(frozen=True)
class Variant:
    """One run of the ablation: ``name`` (its folder under ``--out``), table label and config overrides."""

    name: str
    label: str
    overrides: tuple[str, ...]


def variants() -> dict[str, Variant]:
    """Every variant, in table order."""
    alone = ("loss.center=0.0", "loss.classifier=0.0")
    out = [
        Variant(m, f"{m} only", (f'loss.metric="{m}"', "loss.metric_weight=1.0", *alone)) for m in METRIC_LOSSES
    ]
    out += [
        Variant("center", "center only", ("loss.metric_weight=0.0", "loss.center=1.0", "loss.classifier=0.0")),
        Variant("ce", "CE only (cosine head)", ("loss.metric_weight=0.0", "loss.center=0.0", "loss.classifier=1.0")),
    ]
    out += [
        Variant(f"{m}+ce", f"0.1 {m} + CE", (f'loss.metric="{m}"', "loss.metric_weight=0.1", "loss.center=0.0",
                                             "loss.classifier=1.0"))
        for m in METRIC_LOSSES
    ]  # fmt: skip
    out.append(Variant("default", "joint (triplet + 0.1 center + CE)", ()))
    return {v.name: v for v in out}


def minimal_pair_error(cfg: TrainConfig, checkpoint: Path) -> tuple[float | None, list[dict[str, Any]]]:
    """Mean 2-way confusion of held-out minimal pairs under ``checkpoint``, and each pair's figures.

    ``None`` when the held-out words in the corpus hold no minimal pair.
    """
    import torch

    from kws.data.speech_commands import list_words
    from kws.embedder import TorchEmbedder
    from kws.evaluate import EvalConfig, embed_corpus, pair_confusion
    from kws.model import load_model
    from kws.phonemes import minimal_pairs

    present = set(list_words(cfg.data.root))
    heldout = [w for w in resolve_words(cfg.data)[1] if w in present]
    pairs = minimal_pairs(heldout)
    if not pairs:
        log.warning("no minimal pair among the held-out words %s", ", ".join(heldout))
        return None, []
    use_cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    embedder = TorchEmbedder(load_model(checkpoint), device="cuda" if use_cuda else "cpu")
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    corpus = embed_corpus(embedder, cfg.data.root, "testing", words, progress=False)
    eval_cfg = EvalConfig(pair_shots=cfg.eval.best_shot, episodes=cfg.eval.episodes, queries=cfg.eval.queries)
    results = []
    for a, b, _ in pairs:
        try:
            results.append(pair_confusion(corpus, a, b, eval_cfg))
        except ValueError as exc:
            log.warning("minimal pair %s/%s skipped: %s", a, b, exc)
    if not results:
        return None, []
    error = sum((r["a_as_b"] + r["b_as_a"]) / 2 for r in results) / len(results)
    return error, results


def run_variant(variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``variant`` (unless already done) and measure it; returns its table row."""
    run_dir = Path(args.out) / variant.name
    common = [f'data.root="{args.data}"', 'data.words_vocab=""', f"train.epochs={args.epochs}",
              f'train.out_dir="{run_dir}"']  # fmt: skip
    cfg = load_config(CONFIG, common + args.set + list(variant.overrides))
    log_path = run_dir / "metrics.jsonl"
    done = log_path.is_file() and len(log_path.read_text().splitlines()) >= args.epochs
    if not done:
        start = time.monotonic()
        train(cfg, resume=(run_dir / "last.pt").is_file(), progress=not args.quiet)
        print(f"{variant.label}: {time.monotonic() - start:.0f} s")
    history = [json.loads(line) for line in log_path.read_text().splitlines()]
    key = f"fewshot_{cfg.eval.best_shot}"
    best = max(history, key=lambda r: r.get(key, r.get("seen_acc", 0.0)))
    error, pairs = minimal_pair_error(cfg, run_dir / "best.pt")
    return {
        "label": variant.label,
        **{c: best.get(c) for c in COLUMNS if c != "minimal_pair_error"},
        "minimal_pair_error": error,
        "minimal_pairs": pairs,
        "best_epoch": best["epoch"],
        "train_time_s": sum(r["train_time_s"] for r in history),
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of the ablation."""
    lines = [
        f"| loss | {' | '.join(HEADERS)} | best epoch | train time |",
        "|" + " --- |" * (len(HEADERS) + 3),
    ]
    for r in rows.values():
        pct = [f"{100 * r[c]:.1f}%" if r[c] is not None else "–" for c in COLUMNS]
        lines.append(f"| {r['label']} | {' | '.join(pct)} | {r['best_epoch']} | {r['train_time_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    all_variants = variants()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="corpus in Speech Commands layout")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--set", action="append", default=[], metavar="S.K=V", help="extra config override")
    parser.add_argument("--variants", nargs="+", choices=list(all_variants), metavar="NAME",
                        help="run only these variants (default: all; see --list)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.list:
        for v in all_variants.values():
            print(f"{v.name:<24} {v.label}")
        return
    if not args.data:
        parser.error("--data is required")
    chosen = [all_variants[n] for n in (args.variants or all_variants)]
    rows = {v.name: run_variant(v, args) for v in chosen}
    out = Path(args.out)
    write_json(out / "ablation.json", {"epochs": args.epochs, "overrides": args.set, "rows": rows})
    text = table(rows)
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
