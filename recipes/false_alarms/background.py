"""Make a model's bundled background stream, on which enrolment calibrates to a false-alarm budget.

    python recipes/false_alarms/background.py --model speech-embedding   # -> kws/assets/background_speech_embedding.npz

The stream (about 30 minutes) holds, in this order, with short silences between pieces:

* the real-speech pack's telephone sentences of its *training* callers (``wuw2_sentences/``),
  each with its wake word silenced (the labelled span, 0.3 s either side);
* read sentences of the pack's *training* speakers (``librispeech_utterances/``);
* synthetic sentences: words of the synthetic corpus' *validation* voices, one after another
  with 50-400 ms gaps (each window records the words in it, so that a keyword's own windows
  are never counted against it).

The held-out callers and speakers of the pack, and the corpus' testing voices, are left for
``kws stream-eval``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kws.audio import SAMPLE_RATE, load_audio
from kws.background import Background
from kws.bank import Keyword, KeywordBank
from kws.data.real_pack import read_sentences
from kws.data.speech_commands import list_words
from kws.detect import DetectorConfig
from kws.embedder import ASSETS, load_embedder
from kws.streams import build_stream, embed_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="speech-embedding")
    parser.add_argument("--synth", default="data/synth", help="synthetic corpus (default data/synth)")
    parser.add_argument("--pack", default="../shared/data/real_speech_train", help="real-speech pack")
    parser.add_argument("--minutes", default="15,8,7", help="minutes of telephone, read and synthetic speech")
    parser.add_argument("--out", help="output file (default kws/assets/background_<model>.npz)")
    args = parser.parse_args()
    tel_min, read_min, synth_min = (float(x) for x in args.minutes.split(","))
    embedder = load_embedder(args.model, threads=1)
    rng = np.random.default_rng(0)
    gap = lambda: np.zeros(int(rng.uniform(0.3, 1.0) * SAMPLE_RATE), np.float32)  # noqa: E731

    parts: list[np.ndarray] = []
    spans: list[tuple[str, float, float]] = []  # known words and where they are (s)
    for labelled, minutes in ((True, tel_min), (False, read_min)):
        sentences = read_sentences(args.pack, "training", labelled=labelled)
        total = 0.0
        for i in rng.permutation(len(sentences)):
            if total >= minutes * 60:
                break
            s, x = sentences[i], load_audio(sentences[i].path, SAMPLE_RATE)
            if s.word:
                x[max(0, int((s.start - 0.3) * SAMPLE_RATE)) : int((s.end + 0.3) * SAMPLE_RATE)] = 0.0
            parts += [gap(), x]
            total += len(x) / SAMPLE_RATE
    offset = sum(len(p) for p in parts) / SAMPLE_RATE
    words = [w for w in list_words(args.synth)]
    audio, truth = build_stream(args.synth, words, [], synth_min * 60, seed=0, subset="validation",
                                gap_s=(0.05, 0.4), noise_dbfs=-60.0)  # fmt: skip
    parts.append(audio)
    spans += [(t.word, offset + t.start, offset + t.end) for t in truth]
    stream = np.concatenate(parts)

    bank = KeywordBank(embedder.model_id, embedder.dim)
    bank.add(Keyword("any", np.eye(1, embedder.dim, dtype=np.float32), 0.5, 1))  # the detector needs one
    cfg = DetectorConfig()
    hops = embed_stream(embedder, bank, stream, cfg)
    window_s = embedder.window_samples / SAMPLE_RATE
    in_window = [
        " ".join(w for w, a, b in spans if a < t and b > t - window_s) for t in hops.times
    ]
    name = {"scratch": "background.npz"}.get(args.model, f"background_{Path(str(args.model)).stem.replace('-', '_')}.npz")
    out = Path(args.out) if args.out else ASSETS / name
    Background(hops.embeddings, np.array(in_window), cfg.hop_ms / 1000, embedder.model_id,
               f"{tel_min:g} min telephone sentences (wake words silenced), {read_min:g} min read sentences, "
               f"{synth_min:g} min synthetic sentences").save(out)  # fmt: skip
    print(f"{out}: {len(stream) / SAMPLE_RATE / 60:.1f} min, {len(hops.times)} hops")


if __name__ == "__main__":
    main()
