"""Evaluation sections against brute force, and `kws eval` end to end on the tiny corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws import metrics
from kws.evaluate import (
    EmbeddedCorpus,
    EvalConfig,
    close_pairs,
    open_set_section,
    pair_confusion,
    projection,
)


def small_corpus(seed: int = 0) -> EmbeddedCorpus:
    """4 words x 4 speakers x 2 clips; 'cat' and 'bat' share most of their direction."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((4, 8))
    dirs[1] = dirs[0] + 0.3 * rng.standard_normal(8)
    labels = np.repeat(np.arange(4), 8)
    emb = dirs[labels] + 0.6 * rng.standard_normal((32, 8))
    return EmbeddedCorpus(
        embeddings=metrics.normalize(emb),
        labels=labels,
        classes=["cat", "bat", "dog", "sun"],
        speakers=np.tile(np.repeat(["s1", "s2", "s3", "s4"], 2), 4),
        audio=np.zeros((32, 10), dtype=np.float32),
    )


def test_close_pairs_finds_the_closest_centers() -> None:
    corpus = small_corpus()
    pairs = close_pairs(corpus, 2)
    _, centers = metrics.class_centers(corpus.embeddings, corpus.labels)
    sims = {(a, b): centers[a] @ centers[b] for a in range(4) for b in range(a + 1, 4)}
    ranked = sorted(sims, key=sims.get, reverse=True)[:2]
    assert pairs == [(corpus.classes[a], corpus.classes[b]) for a, b in ranked]
    assert set(pairs[0]) == {"cat", "bat"}


def test_pair_confusion_matches_brute_force() -> None:
    corpus = small_corpus()
    cfg = EvalConfig(episodes=20, queries=3, pair_shots=2)
    got = pair_confusion(corpus, "cat", "bat", cfg)
    keep = np.flatnonzero(np.isin(corpus.labels, [0, 1]))
    emb, labels, spk = corpus.embeddings[keep], corpus.labels[keep], corpus.speakers[keep]
    wrong, total = {0: 0, 1: 0}, {0: 0, 1: 0}
    for ep in metrics.few_shot_episodes(labels, 2, 2, 20, 3, spk, 0):
        centers = [metrics.normalize(emb[s].mean(axis=0)) for s in ep.support]
        for c, s, q in zip(ep.classes, ep.support, ep.queries):
            assert not set(spk[s]) & set(spk[q])
            for i in q:
                total[c] += 1
                own = list(ep.classes).index(c)
                wrong[c] += int(np.argmax([emb[i] @ m for m in centers]) != own)
    assert got["a_as_b"] == pytest.approx(wrong[0] / total[0])
    assert got["b_as_a"] == pytest.approx(wrong[1] / total[1])
    assert 0 < got["a_as_b"] + got["b_as_a"]  # the close pair is confused sometimes
    far = pair_confusion(corpus, "cat", "sun", cfg)
    assert far["center_cosine"] < got["center_cosine"]


def test_open_set_section_matches_metrics() -> None:
    corpus = small_corpus(1)
    cfg = EvalConfig(open_set_shots=2, open_set_episodes=5)
    got = open_set_section(corpus, cfg)
    assert got["eer"] == pytest.approx(metrics.open_set_eer(corpus.embeddings, corpus.labels, 2, 5, 0))
    trials = list(metrics.open_set_trials(corpus.embeddings, corpus.labels, 2, 5, 0))
    for key, far in (("frr_at_far_1", 0.01), ("frr_at_far_5", 0.05)):
        assert got[key] == pytest.approx(np.mean([metrics.frr_at_far(t, i, far) for t, i in trials]))
    assert np.all(np.diff(got["det"]["frr"]) <= 1e-12)  # FRR falls as FAR grows


def test_open_set_other_words_are_impostors_of_every_word() -> None:
    corpus = small_corpus(1)
    plain = list(metrics.open_set_trials(corpus.embeddings, corpus.labels, 2, 3, 0))
    # Clips of a word never enrolled: near 'cat' (hard impostors) and far from everything.
    rng = np.random.default_rng(5)
    near = metrics.normalize(corpus.embeddings[:4] + 0.05 * rng.standard_normal((4, 8)))
    far = metrics.normalize(-corpus.embeddings[:4])
    for others, harder in ((near, True), (far, False)):
        trials = list(metrics.open_set_trials(corpus.embeddings, corpus.labels, 2, 3, 0, None, others))
        for (t0, i0), (t, i) in zip(plain, trials):
            np.testing.assert_array_equal(t, t0)  # the same draws; targets unchanged
            assert len(i) == len(i0) + len(others) * 4 and np.array_equal(i[: len(i0)], i0)
        eers = [metrics.eer(t, i)[0] for t, i in trials]
        before = [metrics.eer(t, i)[0] for t, i in plain]
        assert (np.mean(eers) > np.mean(before)) == harder
    cfg = EvalConfig(open_set_shots=2, open_set_episodes=3)
    others = EmbeddedCorpus(near, np.zeros(4, int), ["x"], np.array(["s9"] * 4))
    got = open_set_section(corpus, cfg, others=others)
    assert got["other_word_clips"] == 4 and got["eer"] > open_set_section(corpus, cfg)["eer"]


def test_projection_is_pca() -> None:
    corpus = small_corpus()
    proj = projection(corpus, max_points=1000, seed=0)
    x = corpus.embeddings - corpus.embeddings.mean(axis=0)
    var = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    assert proj["points"].shape == (32, 2) and proj["centers"].shape == (4, 2)
    np.testing.assert_allclose(proj["explained"], var[:2] / var.sum(), rtol=1e-4)
    np.testing.assert_allclose(np.var(proj["points"], axis=0, ddof=1), var[:2], rtol=1e-4)


def test_cli_eval_on_tiny_corpus(random_checkpoint: Path, tiny_corpus: Path, tmp_path: Path, capsys) -> None:
    from kws.cli import main

    out = tmp_path / "report"
    args = [
        "eval", str(tiny_corpus), "--out", str(out), "--subset", "all", "--shots", "1,3", "--ways", "4",
        "--episodes", "10", "--open-set-episodes", "3", "--pairs", "cat:bat", "--augment-episodes", "2",
        "--model", str(random_checkpoint),
    ]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "4-way 3-shot accuracy" in table and "cat → bat" in table
    for png in ("det.png", "projection.png", "few_shot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert [r["shots"] for r in report["few_shot"]] == [1, 3]
    assert all(0 <= r["mean"] <= 1 and r["ways"] == 4 for r in report["few_shot"])
    assert 0 <= report["open_set"]["eer"] <= 1
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [("cat", "bat")]
    assert report["augmentation"]["episodes"] + report["augmentation"]["skipped"] == 2
    assert report["clips"] > 0 and set(report["words"]) >= {"cat", "bat"}
    assert main(args[:4] + ["--words", "cat", "nope", "--model", str(random_checkpoint)]) == 2
    assert "nope" in capsys.readouterr().err
    # Open-set detection at 2 shots, the corpus's other words scored as impostors of the two evaluated.
    two = [*args[:6], "--words", "cat", "bat", "--shots", "1", "--ways", "2", "--episodes", "5",
           "--open-set-episodes", "3", "--open-set-shots", "2", "--open-set-unknown", "--model", str(random_checkpoint)]  # fmt: skip
    assert main(two) == 0
    assert "open-set EER (2-shot, " in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    words = len(report["words"])
    assert report["open_set"]["shots"] == 2 and report["open_set"]["other_word_clips"] == report["clips"] * (6 - words) // words
    with pytest.raises(SystemExit):
        main([*two[:-2], "--open-set-shots", "0"])
