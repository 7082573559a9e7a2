#!/usr/bin/env bash
# Speech Commands recipe: synthesise the corpus, then train.
#
#   recipes/speech_commands/run.sh                      # one GPU (or CPU)
#   NPROC=4 recipes/speech_commands/run.sh              # 4 GPUs: torchrun + DDP
#   recipes/speech_commands/run.sh --set train.epochs=5 # extra arguments go to `kws train`
#
# Environment: DATA (corpus folder, default data/synth), OUT (run folder, default
# runs/speech_commands), SPEAKERS (synthetic speakers, default 120), ACCENTS (the
# fraction of them with a non-English espeak-ng voice, default 0), NPROC
# (processes, default 1), PYTHON (default python). Re-running resumes both the
# synthesis (clips on disk are skipped) and the training (from OUT/last.pt).
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-data/synth}
OUT=${OUT:-runs/speech_commands}
SPEAKERS=${SPEAKERS:-120}
ACCENTS=${ACCENTS:-0}
NPROC=${NPROC:-1}
PYTHON=${PYTHON:-python}
CONFIG=recipes/speech_commands/config.toml

# 1. Corpus: the 3,000 training words and the 35 Speech Commands words (held out
#    from training by the config, used for few-shot evaluation).
if [ ! -f "$DATA/.complete" ]; then
    vocab=$(mktemp)
    trap 'rm -f "$vocab"' EXIT
    "$PYTHON" -c '
from kws.data.synth import load_vocab
print("\n".join(dict.fromkeys(load_vocab("train") + load_vocab("speech_commands"))))
' > "$vocab"
    "$PYTHON" -m kws synth --vocab "$vocab" --speakers "$SPEAKERS" --accents "$ACCENTS" --out "$DATA"
    touch "$DATA/.complete"
fi

# 2. Training (resumes if OUT already holds a run).
resume=()
[ -f "$OUT/last.pt" ] && resume=(--resume)
if [ "$NPROC" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
        -m kws train --config "$CONFIG" --set "data.root=\"$DATA\"" --out "$OUT" "${resume[@]}" "$@"
else
    "$PYTHON" -m kws train --config "$CONFIG" --set "data.root=\"$DATA\"" --out "$OUT" "${resume[@]}" "$@"
fi
