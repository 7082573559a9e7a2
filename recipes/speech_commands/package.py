"""Turn a finished run into the bundled default model (``kws/assets/``).

    python recipes/speech_commands/package.py --run runs/speech_commands --data data/synth

Writes, from the run's ``best.pt`` (or ``--checkpoint``) and the corpus it was trained on:

* ``default.pt``: the weights and config only (no optimizer or loss state), with
  the run's metrics and training config in ``extra``;
* ``default.onnx``: its ONNX export (parity-checked against PyTorch);
* ``impostors.npz``: embeddings of ``--per-word`` validation-speaker clips of
  every corpus word, for threshold calibration at enrolment.

The clips of ``kws demo`` (``demo/``) are not model-specific: ``kws demo --make-assets PACK``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kws.data.speech_commands import list_words
from kws.embedder import BUNDLED, TorchEmbedder
from kws.impostors import IMPOSTORS_PATH, build_impostor_set
from kws.export import export_onnx, synthetic_clips
from kws.model import KeywordModel, load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training run folder (holds best.pt)")
    parser.add_argument("--data", required=True, help="the corpus the run trained on")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (best.pt)")
    parser.add_argument("--per-word", type=int, default=3, help="impostor clips per word (3)")
    args = parser.parse_args()

    payload = load_checkpoint(Path(args.run) / args.checkpoint)
    model = KeywordModel(payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    extra = payload["extra"]
    checkpoint, onnx_file = BUNDLED["scratch"]
    save_checkpoint(
        checkpoint,
        model,
        extra={"metrics": extra.get("metrics", {}), "train_config": extra.get("config", {}),
               "heldout_words": extra.get("heldout_words", [])},
    )  # fmt: skip
    print(f"{checkpoint}: {model.model_id()}, epoch {extra.get('metrics', {}).get('epoch')}")
    report = export_onnx(model, onnx_file, synthetic_clips())
    print(f"{onnx_file}: parity max abs diff {report.max_abs_diff:.2e}")
    embedder = TorchEmbedder(model)
    build_impostor_set(embedder, args.data, list_words(args.data), args.per_word, IMPOSTORS_PATH)
    print(f"{IMPOSTORS_PATH}: written")


if __name__ == "__main__":
    main()
