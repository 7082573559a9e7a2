"""Experiment: adaptive s-norm of stream scores against an impostor cohort (issue 23, item 2).

    python recipes/false_alarms/snorm.py --model speech-embedding --banks runs/fa/se_before --tag se

Scores every hop of the saved streams of ``kws stream-eval --hops`` (``runs/fa/hops_<tag>_*.npz``)
two ways and sweeps one threshold for all keywords: raw cosine (each keyword's calibrated
threshold + a common offset, as the detector does) and adaptive s-norm,
``0.5 * ((s - mu_k) / sd_k + (s - mu_x) / sd_x)``, where ``mu_k, sd_k`` are the mean and
spread of the keyword's ``K`` highest scores against the model's bundled impostor set and
``mu_x, sd_x`` those of the window's. Prints, for each, recall and false alarms per hour
along the sweep and the spread of the keywords' false-alarm rates at the setting nearest
30 per hour in total.
"""

from __future__ import annotations

import argparse

import numpy as np

from kws.audio import SAMPLE_RATE
from kws.bank import KeywordBank
from kws.detect import DetectorConfig, Trigger
from kws.embedder import load_embedder
from kws.enroll import load_impostors
from kws.streams import StreamHops, build_sentence_stream, build_stream, match_events


def _topk_stats(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = -np.partition(-sims, k - 1, axis=-1)[..., :k]
    return top.mean(axis=-1), top.std(axis=-1) + 1e-6


def _sweep(names, scores, times, truth, hours, window_s, thresholds, cfg) -> list[dict]:
    out = []
    for th in thresholds:
        per = {}
        for k, name in enumerate(names):
            trig = Trigger([name], np.array([th[k]]), cfg.smoothing, cfg.refractory_ms / 1000)
            ev = [e for e in (trig.step(t, None if s is None else s[k : k + 1]) for t, s in zip(times, scores)) if e]
            mine = [t for t in truth if t.word == name]
            lat, fa = match_events(ev, mine, window_s)
            per[name] = (len(lat), len(mine), len(fa) / hours)
        trig = Trigger(list(names), np.asarray(th), cfg.smoothing, cfg.refractory_ms / 1000)
        ev = [e for e in (trig.step(t, s) for t, s in zip(times, scores)) if e]
        targets = [t for t in truth if t.word in names]
        lat, fa = match_events(ev, targets, window_s)
        out.append({"recall": len(lat) / len(targets), "fa_per_hour": len(fa) / hours, "per_keyword": per})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="speech-embedding")
    parser.add_argument("--banks", required=True, help="folder of synth_bank.json / real_bank.json")
    parser.add_argument("--tag", required=True, help="hops files runs/fa/hops_<tag>_synth30.npz, _real.npz")
    parser.add_argument("--cohort", type=int, default=200, help="K, the cohort size (200)")
    args = parser.parse_args()
    embedder = load_embedder(args.model, backend="onnx", threads=1)
    cfg = DetectorConfig()
    for kind in ("synth", "real"):
        bank = KeywordBank.load(f"{args.banks}/{kind}_bank.json")
        hops = StreamHops.load(f"runs/fa/hops_{args.tag}_{'synth30' if kind == 'synth' else 'real'}.npz")
        if kind == "synth":
            words = open(f"{args.banks}/distractors.txt").read().split()
            audio, truth = build_stream("data/synth", bank.names, words, 30 * 60, seed=0, subset="testing")
        else:
            audio, truth = build_sentence_stream("../shared/data/real_speech_train", "heldout", None, seed=0)
        hours = len(audio) / SAMPLE_RATE / 3600
        cohort = load_impostors(embedder)
        kept = ~np.isnan(hops.embeddings[:, 0])
        x = hops.embeddings[kept]
        raw = bank.score(x)  # (n, K)
        mu_x, sd_x = _topk_stats(x @ cohort.T, args.cohort)
        norm = np.empty_like(raw)
        for k, name in enumerate(bank.names):
            mu_k, sd_k = _topk_stats((cohort @ bank[name].centers.T).max(axis=1), args.cohort)
            norm[:, k] = 0.5 * ((raw[:, k] - mu_k) / sd_k + (raw[:, k] - mu_x) / sd_x)
        for label, mat, ths in (
            ("raw + offset", raw, [bank.thresholds + o for o in np.arange(0.0, 0.41, 0.04)]),
            ("s-norm", norm, [np.full(len(bank), t) for t in np.arange(2.0, 8.01, 0.5)]),
        ):
            scores = [None] * len(hops.times)
            for i, row in zip(np.flatnonzero(kept), mat):
                scores[i] = row
            res = _sweep(bank.names, scores, hops.times, truth, hours, hops.window_s, ths, cfg)
            print(f"{kind} {label}:")
            for th, r in zip(ths, res):
                fas = [v[2] for v in r["per_keyword"].values()]
                print(f"  {th[0]:6.2f}  recall {r['recall']:.3f}  FA/h {r['fa_per_hour']:7.1f}  "
                      f"per keyword FA/h {' '.join(f'{f:.0f}' for f in fas)}")  # fmt: skip


if __name__ == "__main__":
    main()
