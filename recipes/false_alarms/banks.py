"""Enrol the two benchmark banks of the false-alarm work (issue 23), for one model.

    python recipes/false_alarms/banks.py --model speech-embedding --out runs/fa/se

* ``synth_bank.json``: five held-out Speech Commands words with minimal-pair neighbours in
  the synthetic corpus (three, bed, right, nine, four), each from 3 training-split clips
  (voices the stream does not use). ``distractors.txt``: their neighbours in the corpus
  (one phoneme apart), the words the synthetic stream is made of besides the keywords.
* ``real_bank.json``: the real-speech pack's five wake words, each from 3 isolated clips of
  held-out callers who have no sentence in the stream (``kws stream-eval --sentences``
  streams the sentences of the other held-out callers).

``--fa-per-hour N`` calibrates each keyword to a false-alarm budget on the bundled background
speech (:mod:`kws.background`). ``--confusables`` enrols each keyword with its confusable words as negatives (:mod:`kws.confusables`).
``--spoken`` adds the speech engines' voices of each keyword (:mod:`kws.spoken`; the two made-up
wake words said as "think engine" and "on word"). A take enrolment refuses is replaced by the
word's next one (with espeak-ng's voices alone, one of ``nine``'s synthetic takes is).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from kws.audio import load_audio
from kws.bank import KeywordBank
from kws.confusables import ConfusableConfig
from kws.data.real_pack import read_pack, read_sentences
from kws.embedder import load_embedder
from kws.enroll import enroll
from kws.errors import EnrollmentError
from kws.phonemes import edit_distance, phonemes_of
from kws.spoken import SpokenConfig

SYNTH_KEYWORDS = ("three", "bed", "right", "nine", "four")
REAL_KEYWORDS = ("operator", "thinkengine", "onword", "wildfire", "voyager")
# What the speech engines say for a wake word that is not an English word.
SAY = {"thinkengine": "think engine", "onword": "on word"}


def _enrol_all(embedder, bank: KeywordBank, takes: dict[str, list[Path]], options: dict) -> dict:
    """Enrol each word from the first 3 of its takes; a take enrolment refuses (a take unlike the
    others) is replaced by the next, as a user would record it again."""
    timings = {}
    for word, candidates in takes.items():
        files, spare = list(candidates[:3]), list(candidates[3:])
        start = time.perf_counter()
        say = SAY.get(word) if options.get("spoken") else None
        while True:
            try:
                res = enroll(embedder, word, [load_audio(f, embedder.sample_rate) for f in files], bank=bank,
                             clip_names=[f.name for f in files], force=True, say=say, **options)  # fmt: skip
                break
            except EnrollmentError as exc:
                refused = [f for f in files if str(exc).startswith(f"{f.name}: ")]
                if not refused or not spare:
                    raise
                print(f"  {word}: {exc}; the next take instead")
                files = [f for f in files if f not in refused] + [spare.pop(0) for _ in refused if spare]
        timings[word] = time.perf_counter() - start
        bank.add(res.keyword, replace=True)
        print(f"  {word}: threshold {res.threshold:.3f} ({timings[word]:.2f} s) from {', '.join(f.name for f in files)}")
        if res.budget is not None:
            b = res.budget
            print(f"    budget {b.fa_per_hour:g}/h: fires at {b.fire_threshold:.3f}, {b.expected_fa_per_hour:.1f}/h on the "
                  f"background, expected recall {b.expected_recall:.2f}{'' if b.met else ' (NOT MET)'}")  # fmt: skip
        if res.confusables:
            print("    confusables: " + ", ".join(f"{n.word} {sim:.2f}" for n, sim in res.confusables))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="speech-embedding")
    parser.add_argument("--synth", default="data/synth", help="synthetic corpus (default data/synth)")
    parser.add_argument("--pack", default="../shared/data/real_speech_train", help="real-speech pack")
    parser.add_argument("--out", required=True, help="folder for the banks")
    parser.add_argument("--confusables", action="store_true", help="add confusable words as negatives")
    parser.add_argument("--fa-per-hour", type=float, help="calibrate each keyword to this budget on running speech")
    parser.add_argument("--spoken", action="store_true", help="add the speech engines' voices of each keyword")
    args = parser.parse_args()
    options = {"confusables": ConfusableConfig() if args.confusables else None, "fa_per_hour": args.fa_per_hour,
               "spoken": SpokenConfig() if args.spoken else None}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder(args.model, threads=1)

    synth = Path(args.synth)
    words = sorted(p.name for p in synth.iterdir() if p.is_dir() and not p.name.startswith("_"))
    lexicon = dict(zip(words, phonemes_of(words)))
    neighbours = sorted(
        {w for k in SYNTH_KEYWORDS for w in words if w not in SYNTH_KEYWORDS and edit_distance(lexicon[k], lexicon[w]) == 1}
    )
    (out / "distractors.txt").write_text(" ".join(neighbours) + "\n")
    testing = set((synth / "testing_list.txt").read_text().split()) | set((synth / "validation_list.txt").read_text().split())
    rng = np.random.default_rng(0)
    clips = {}
    for k in SYNTH_KEYWORDS:
        train = sorted(p for p in (synth / k).glob("*.wav") if f"{k}/{p.name}" not in testing)
        chosen = [train[i] for i in sorted(rng.choice(len(train), 3, replace=False))]
        clips[k] = chosen + [p for p in train if p not in chosen]
    print(f"synthetic bank ({len(neighbours)} neighbours: {' '.join(neighbours)})")
    bank = KeywordBank(embedder.model_id, embedder.dim)
    timings = _enrol_all(embedder, bank, clips, options)
    bank.save(out / "synth_bank.json")

    callers_in_stream = {s.speaker for s in read_sentences(args.pack, "heldout")}
    isolated = [c for c in read_pack(args.pack, "heldout") if c.source == "wuw2" and c.context == "isolated"]
    clips = {}
    for k in REAL_KEYWORDS:
        mine = sorted((c for c in isolated if c.word == k and c.speaker not in callers_in_stream), key=lambda c: c.path)
        clips[k] = [c.path for c in mine]
    print("real bank")
    bank = KeywordBank(embedder.model_id, embedder.dim)
    timings.update(_enrol_all(embedder, bank, clips, options))
    bank.save(out / "real_bank.json")
    print(f"enrolment time per keyword: median {np.median(list(timings.values())):.2f} s, max {max(timings.values()):.2f} s")


if __name__ == "__main__":
    main()
