"""The 12-class benchmark: the classifier on hand-made embeddings, and the whole
pipeline on hand-made layouts where each word is a tone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws.audio import SAMPLE_RATE, write_audio
from kws.data.speech_commands import SILENCE, UNKNOWN
from kws.embedder import Embedder
from kws.evaluate import EmbeddedCorpus
from kws.metrics import normalize
from kws.twelve_class import (
    CLASSES,
    COMMANDS,
    SILENCE_ID,
    UNKNOWN_ID,
    Prototypes,
    TwelveClassConfig,
    balanced_accuracy,
    confusion_matrix,
    evaluate_twelve_class,
    fit_biases,
    format_twelve_class,
    embed_reference,
    prototypes_from,
    twelve_class_labels,
)


def axis(i: int, dim: int = 16) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def test_prototypes_take_each_class_best_match_plus_its_bias() -> None:
    vectors = np.stack([axis(i) for i in range(10)] + [axis(10), axis(11), axis(12)])
    owner = np.array(list(range(10)) + [UNKNOWN_ID, UNKNOWN_ID, SILENCE_ID])
    protos = Prototypes(vectors, owner, np.zeros(12, np.float32))
    queries = np.stack([axis(3), axis(11), axis(12), normalize(axis(2) + 0.9 * axis(10))])
    raw = protos.raw_scores(queries)
    assert raw.shape == (4, 12)
    np.testing.assert_allclose(raw[1, UNKNOWN_ID], 1.0)  # best of its two prototypes
    assert list(protos.predict(queries)) == [3, UNKNOWN_ID, SILENCE_ID, 2]
    protos.biases[UNKNOWN_ID] = 0.1  # 0.9 / |.| + 0.1 now beats 1 / |.|
    assert protos.predict(queries)[3] == UNKNOWN_ID
    # Word 3 gains a prototype on axis 13; its reference prototype (axis 3) stays.
    centers = np.stack([axis(13 if i == 3 else i) for i in range(10)])
    adapted = protos.with_commands(centers)
    assert list(adapted.predict(np.stack([axis(13), axis(3), axis(11)]))) == [3, 3, UNKNOWN_ID]
    assert protos.predict(axis(13)[None])[0] != 3
    assert adapted.biases[UNKNOWN_ID] == pytest.approx(0.1) and len(adapted.vectors) == len(vectors) + 10


def test_confusion_matrix_and_balanced_accuracy_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 12, 200), rng.integers(0, 12, 200)
    cm = confusion_matrix(true, pred)
    for i, j in [(0, 0), (3, 7), (11, 2)]:
        assert cm[i, j] == np.sum((true == i) & (pred == j))
    recalls = [np.mean(pred[true == c] == c) for c in range(12) if (true == c).any()]
    assert balanced_accuracy(true, pred) == pytest.approx(np.mean(recalls))


def test_fit_biases_finds_the_unknown_bias_that_separates_the_classes() -> None:
    # Command clips score 0.8 on their word and 0.5 on _unknown_; unknown clips score
    # 0.7 on a word and 0.6 on _unknown_: any unknown bias in (0.1, 0.3) classifies all.
    raw = np.full((20, 12), -1.0, np.float32)
    true = np.array([0] * 10 + [UNKNOWN_ID] * 10)
    raw[:10, 0], raw[:10, UNKNOWN_ID] = 0.8, 0.5
    raw[10:, 4], raw[10:, UNKNOWN_ID] = 0.7, 0.6
    biases = fit_biases(raw, true)
    assert 0.1 < biases[UNKNOWN_ID] < 0.3
    assert balanced_accuracy(true, np.argmax(raw + biases, axis=1)) == 1.0


def test_reference_prototypes_and_label_mapping() -> None:
    classes = ["cat", *COMMANDS, SILENCE]
    labels = np.array([0, 0, *range(1, 11), 11, 11, 11])
    emb = normalize(np.eye(16, dtype=np.float32)[[12, 12, *range(10), 13, 14, 14]])
    corpus = EmbeddedCorpus(emb, labels, classes, np.array(["a", "b", *["s"] * 10, "white", "pink", "pink"]))
    assert list(twelve_class_labels(corpus)) == [UNKNOWN_ID, UNKNOWN_ID, *range(10), SILENCE_ID, SILENCE_ID, SILENCE_ID]
    protos = prototypes_from(corpus)
    assert sorted(protos.owner.tolist()) == [*range(10), UNKNOWN_ID, SILENCE_ID, SILENCE_ID]  # one per noise file
    assert list(protos.predict(emb)) == list(twelve_class_labels(corpus))


def test_each_reference_corpus_weighs_the_same_in_a_word_center() -> None:
    """Nine clips of 'yes' from one corpus and one from another: the center lies halfway, not near the nine."""
    a, b = np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1]
    classes = [*COMMANDS, "cat", SILENCE]
    labels = np.array([0] * 10 + list(range(1, 12)))
    emb = np.concatenate([[a] * 9, [b], np.eye(8, dtype=np.float32)[[2] * 11]])
    corpus = EmbeddedCorpus(emb, labels, classes, np.array([f"s{i}" for i in range(21)]))
    sources = np.array([0] * 9 + [1] * 12)
    yes = prototypes_from(corpus, sources).vectors[0]
    np.testing.assert_allclose(yes, normalize(a + b), atol=1e-6)
    pooled = prototypes_from(corpus).vectors[0]  # one source: every clip counts the same
    np.testing.assert_allclose(pooled, normalize(9 * a + b), atol=1e-6)


# ---------------------------------------------------------------------------- whole pipeline

BAND_HZ = 64.0  # the ToneEmbedder's bands; each word is a tone in the middle of its own band
BANDS = {w: 4 + 3 * i for i, w in enumerate(COMMANDS)} | {"cat": 38, "bird": 38, "dog": 44}
FREQS = {w: (b + 0.5) * BAND_HZ for w, b in BANDS.items()}


class ToneEmbedder(Embedder):
    """Spectrum in 64 bands: tones of different words are orthogonal-ish, noise is flat."""

    window_samples = SAMPLE_RATE
    dim = 64
    model_id = "tones"

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        spec = np.abs(np.fft.rfft(batch, axis=1))[:, :4096]
        return normalize(spec.reshape(len(batch), 64, -1).sum(axis=2))


def tone(freq: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.6 * SAMPLE_RATE)) / SAMPLE_RATE
    x = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.002 * rng.standard_normal()) * t)
    return np.pad(x, (2000, SAMPLE_RATE - len(x) - 2000)).astype(np.float32) + 1e-3 * rng.standard_normal(SAMPLE_RATE).astype(np.float32)


def make_reference(root: Path, rng: np.random.Generator) -> None:
    """Ten commands + cat, dog by speakers r0..r5 (r4 validation, r5 testing) and a noise file."""
    for word in [*COMMANDS, "cat", "dog"]:
        for s in range(6):
            write_audio(root / word / f"r{s}_nohash_0.wav", tone(FREQS[word], rng))
    words = [*COMMANDS, "cat", "dog"]
    (root / "validation_list.txt").write_text("".join(f"{w}/r4_nohash_0.wav\n" for w in words))
    (root / "testing_list.txt").write_text("".join(f"{w}/r5_nohash_0.wav\n" for w in words))
    write_audio(root / "_background_noise_" / "white.wav", 0.1 * rng.standard_normal(5 * SAMPLE_RATE).astype(np.float32))


def make_test_layout(root: Path, rng: np.random.Generator) -> None:
    """The canonical test folders: ten commands, _unknown_ (bird, dog) and _silence_, speakers t0..t5."""
    for word in COMMANDS:
        for s in range(6):
            write_audio(root / word / f"t{s}_nohash_0.wav", tone(FREQS[word], rng))
    for s in range(6):
        write_audio(root / UNKNOWN / f"bird_t{s}_nohash_0.wav", tone(FREQS["bird"], rng))
        write_audio(root / UNKNOWN / f"dog_t{s}_nohash_1.wav", tone(FREQS["dog"], rng))
    for i in range(4):
        write_audio(root / SILENCE / f"{i}.wav", 0.05 * rng.standard_normal(SAMPLE_RATE).astype(np.float32))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ref, test = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("test12")
    make_reference(ref, rng)
    make_test_layout(test, rng)
    return ref, test


def test_twelve_class_benchmark_on_tone_layouts(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    ref, test = layouts
    cfg = TwelveClassConfig(shots=(1, 3), draws=3, silence_clips=10)
    report = evaluate_twelve_class(ToneEmbedder(), test, ref, cfg, tmp_path, progress=False)
    counts = report["class_clips"]
    assert counts == {**{w: 6 for w in COMMANDS}, UNKNOWN: 12, SILENCE: 4}
    z = report["zero_shot"]
    assert z["accuracy"] == 1.0 and z["clips"] == 76 and z["accuracy_ci95"] == 0.0
    assert np.array_equal(np.array(z["confusion"]), np.diag([counts[c] for c in CLASSES]))
    assert [r["shots"] for r in report["few_shot"]] == [1, 3]
    for r in report["few_shot"]:
        # Half of the 6 speakers give the support, the other half (and every silence clip) is scored.
        assert r["accuracy"] == 1.0 and r["clips"] == 3 * (10 * 3 + 2 * 3 + 4)
    assert json.loads((tmp_path / "twelve_class.json").read_text())["zero_shot"]["accuracy"] == 1.0
    for name in report["files"].values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_twelve_class(report)
    assert "(a) zero real examples" in table and "(b) 3 real clips/word" in table


def test_several_reference_corpora_are_read_as_one(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    ref, test = layouts
    more = tmp_path / "more"
    rng = np.random.default_rng(2)
    for word in ("go", "dog"):  # the same speaker ids as the first corpus: other people all the same
        for s in range(6):
            write_audio(more / word / f"r{s}_nohash_0.wav", tone(FREQS[word], rng))
    (more / "validation_list.txt").write_text("go/r4_nohash_0.wav\ndog/r4_nohash_0.wav\n")
    (more / "testing_list.txt").write_text("go/r5_nohash_0.wav\ndog/r5_nohash_0.wav\n")
    write_audio(more / "_background_noise_" / "white.wav", 0.1 * rng.standard_normal(5 * SAMPLE_RATE).astype(np.float32))
    cfg = TwelveClassConfig(shots=(1,), draws=2, silence_clips=10)
    train = embed_reference(ToneEmbedder(), [ref, more], "training", cfg, progress=False)
    go = train.labels == train.classes.index("go")
    assert go.sum() == 8 and len(set(train.speakers[go])) == 8  # r0-r3 of each corpus
    assert list(train.sources[go]) == [0] * 4 + [1] * 4
    assert (train.labels == train.classes.index(SILENCE)).sum() == 20  # each corpus' own noise cuts
    report = evaluate_twelve_class(ToneEmbedder(), test, [ref, more], cfg, tmp_path / "out", progress=False)
    assert report["reference"] == [str(ref), str(more)] and report["zero_shot"]["accuracy"] == 1.0


def test_twelve_class_confuses_a_word_whose_reference_is_wrong(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    """If the reference 'go' sounds like 'stop', no zero-shot 'go' clip is right, and one real shot mends it."""
    ref, test = layouts
    bad = tmp_path / "bad_reference"
    rng = np.random.default_rng(1)
    make_reference(bad, rng)
    for s in range(6):
        write_audio(bad / "go" / f"r{s}_nohash_0.wav", tone(FREQS["stop"], rng))
    # Clean validation: noisy tones would blur the twins' ties that this test reads.
    cfg = TwelveClassConfig(shots=(1,), draws=2, silence_clips=10, augment_validation=False)
    report = evaluate_twelve_class(ToneEmbedder(), test, bad, cfg, tmp_path / "out", progress=False)
    z = report["zero_shot"]
    stop, go = CLASSES.index("stop"), CLASSES.index("go")
    assert z["per_class_recall"]["go"] == 0.0 and z["per_class_recall"]["yes"] == 1.0
    assert 0.0 < z["accuracy_ci95"] < 0.2  # the errors are spread over the speakers who said 'go'
    assert z["confusion"][stop][stop] + z["confusion"][stop][go] == 6  # 'stop' clips split between the twins
    assert report["few_shot"][0]["per_class_recall"]["go"] == 1.0


def test_cli_twelve_class(random_checkpoint: Path, layouts: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from kws.cli import main

    ref, test = layouts
    out = tmp_path / "twelve"
    # No --subset: the official test layout has no split lists, so 12-class mode scores all of it.
    args = ["eval", str(test), "--out", str(out), "--model", str(random_checkpoint)]
    assert main([*args, "--twelve-class", "--reference", str(ref), "--shots", "1", "--draws", "2"]) == 0
    printed = capsys.readouterr().out
    assert "12-class Speech Commands (76 clips)" in printed and "(b) 1 real clips/word" in printed
    report = json.loads((out / "twelve_class.json").read_text())
    assert sum(map(sum, report["zero_shot"]["confusion"])) == 76
    assert main([*args, "--twelve-class"]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main([*args, "--twelve-class", "--reference", str(ref), "--spoken", "--open-set-unknown"]) == 2
    assert "--spoken, --open-set-unknown: not for --twelve-class" in capsys.readouterr().err


def test_validation_clips_are_augmented_reproducibly(layouts: tuple[Path, Path]) -> None:
    ref, _ = layouts
    cfg = TwelveClassConfig(silence_clips=10)
    clean = embed_reference(ToneEmbedder(), [ref], "validation", cfg, progress=False)
    noisy = embed_reference(ToneEmbedder(), [ref], "validation", cfg, progress=False, augment=True)
    again = embed_reference(ToneEmbedder(), [ref], "validation", cfg, progress=False, augment=True)
    np.testing.assert_array_equal(noisy.embeddings, again.embeddings)  # seeded by cfg.seed
    assert np.array_equal(noisy.labels, clean.labels)
    # Noise and channel effects move word clips off their tone: lower similarity to the clean embedding.
    words = twelve_class_labels(clean) != SILENCE_ID
    sims = np.sum(clean.embeddings * noisy.embeddings, axis=1)[words]
    assert sims.mean() < 0.99 and (sims > 0.2).all()
