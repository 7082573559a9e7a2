"""What moved what: the head over the speech stem, trained on more kinds of data one step at a time.

    python recipes/speech_embedding/ablation.py --out runs/se_ablation [--seeds 0 1] [--variants ...] [--whiten 0.5]

Cumulative variants of recipes/speech_embedding/config.toml, each with every seed:

* ``synthetic``: the espeak-ng corpus only (no real-speech pack, so no real noise either);
* ``pack``: + the real-speech pack;
* ``engines``: + a corpus of the other speech engines (``kws synth --engines pico,rhvoice,piper``,
  ``--engines-corpus``): the recipe as it is;
* ``conditions``: + simulated rooms, telephone and laptop channels and codecs on the augmented
  copies (``data.conditions``).

Each run's ``best.pt`` (its best epoch on the pack's held-out speakers; on the synthetic
held-out words for ``synthetic``) is scored on both speaker halves of the Speech Commands
test speakers (10 words, 10-way across speakers, ``kws eval``'s episodes) and on the pack's
held-out speakers (its 25 words, 10-way 3-shot across speakers, the clips as recorded,
as ``kws eval`` takes them); the stem runs once per clip for all runs. Writes
``ablation.md`` and ``ablation.json`` in ``--out``; a finished run is not trained again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kws.audio import load_audio
from kws.data.real_pack import read_pack
from kws.embedder import load_embedder
from kws.evaluate import EvalConfig, evaluate
from kws.fileio import atomic_path, write_json
from kws.metrics import few_shot_accuracy

log = logging.getLogger(__name__)

CONFIG = Path(__file__).with_name("config.toml")
SC = Path("../shared/data/speech_commands_v0.02_test_dev")
PACK = Path("../shared/data/real_speech_train")
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
VARIANTS = ("synthetic", "pack", "engines", "conditions")
LABELS = {
    "synthetic": "espeak-ng corpus only",
    "pack": "+ real-speech pack",
    "engines": "+ Pico, RHVoice and Piper voices (the recipe)",
    "conditions": "+ rooms, channels and codecs",
}


def overrides(variant: str, engines_corpus: str) -> list[str]:
    if variant == "synthetic":
        return ['data.real_pack=""', "data.extra_roots=[]"]
    if variant == "pack":
        return ["data.extra_roots=[]"]
    out = [f'data.extra_roots=["{engines_corpus}"]']
    if variant == "conditions":
        out.append("data.conditions=true")
    return out


class MemoStem:
    """The stem with a memory: the same clip is run through it once for every head scored."""

    def __init__(self, stem) -> None:
        self.stem = stem
        self.memory: dict[bytes, np.ndarray] = {}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        keys = [hashlib.sha1(row.tobytes()).digest() for row in batch]
        todo = [i for i, k in enumerate(keys) if k not in self.memory]
        if todo:
            for i, frames in zip(todo, self.stem(batch[todo])):
                self.memory[keys[i]] = frames
        return np.stack([self.memory[k] for k in keys])


def score(run: Path, stem: MemoStem | None, out: Path) -> tuple[dict[str, Any], MemoStem]:
    embedder = load_embedder(run / "best.pt", threads=1)
    stem = stem or MemoStem(embedder.stem)
    embedder.stem = stem
    figures: dict[str, Any] = {}
    for half in ("choose", "report"):
        speakers = (SC / f"{half}_speakers.txt").read_text().split()
        cfg = EvalConfig(subset="all", words=WORDS, speakers=speakers)
        report = evaluate(embedder, SC, cfg, out / f"eval_{half}", progress=False)
        for row in report["few_shot"]:
            figures[f"{half}_{row['shots']}shot"] = 100 * row["mean"]
        figures[f"{half}_eer"] = 100 * report["open_set"]["eer"]
    clips = read_pack(PACK, "heldout")
    _, labels = np.unique([c.word for c in clips], return_inverse=True)
    emb = embedder([load_audio(c.path) for c in clips])
    speakers = np.array([c.speaker for c in clips])
    figures["pack_heldout_3shot"] = 100 * few_shot_accuracy(emb, labels, 10, 3, 300, 5, speakers).mean
    return figures, stem


def best_epoch(run: Path) -> int:
    from kws.model import load_checkpoint

    return int(load_checkpoint(run / "best.pt")["extra"]["epoch"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--engines-corpus", default="data/synth_engines")
    ap.add_argument("--train-only", action="store_true", help="train the runs, score nothing")
    ap.add_argument("--whiten", type=float, default=0.0,
                    help="model.head_whiten of every run (default 0: the published table was made before whitening)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    results_path = out / "ablation.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    stem = None
    for variant in args.variants:
        for seed in args.seeds:
            name = f"{variant}_seed{seed}"
            run = out / name
            if not (run / "best.pt").is_file():
                cmd = [sys.executable, "-m", "kws", "train", "--config", str(CONFIG), "--out", str(run),
                       "--set", f"train.seed={seed}", "--set", f"model.head_whiten={args.whiten}"]  # fmt: skip
                for o in overrides(variant, args.engines_corpus):
                    cmd += ["--set", o]
                log.info("%s: %s", name, " ".join(cmd))
                subprocess.run(cmd, check=True)
            if args.train_only or name in results:
                continue
            figures, stem = score(run, stem, run)
            results[name] = {"variant": variant, "seed": seed, "best_epoch": best_epoch(run), **figures}
            write_json(results_path, results)
            log.info("%s: %s", name, results[name])
    write_table(results, out / "ablation.md")
    return 0


def write_table(results: dict[str, Any], path: Path) -> None:
    cols = ["pack_heldout_3shot", "choose_1shot", "choose_3shot", "choose_5shot", "choose_eer",
            "report_1shot", "report_3shot", "report_5shot", "report_eer"]  # fmt: skip
    lines = [
        "| training data | seeds | pack held-out 3-shot | choose 1 / 3 / 5-shot | choose EER | report 1 / 3 / 5-shot | report EER |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        rows = [r for r in results.values() if r["variant"] == variant]
        if not rows:
            continue

        def cell(key: str, rows: list = rows) -> str:
            v = np.array([r[key] for r in rows], dtype=float)
            return f"{v.mean():.1f}" + (f" ± {(v.max() - v.min()) / 2:.1f}" if len(v) > 1 else "")

        c = {k: cell(k) for k in cols}
        lines.append(
            f"| {LABELS[variant]} | {len(rows)} | {c['pack_heldout_3shot']} | {c['choose_1shot']} / {c['choose_3shot']} / "
            f"{c['choose_5shot']} | {c['choose_eer']} | {c['report_1shot']} / {c['report_3shot']} / {c['report_5shot']} "
            f"| {c['report_eer']} |"
        )
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
