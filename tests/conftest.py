"""Shared fixtures. Heavy ones are session-scoped so that the suite stays fast."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, randomly initialised model saved as a checkpoint (deterministic)."""
    import torch

    from kws.model import KeywordModel, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random.pt"
    save_checkpoint(path, KeywordModel())
    return path


TINY_WORDS = ("yes", "no", "cat", "bat", "left", "seven")


def _fake_pack(root: Path, words=("alpha", "bravo", "charlie", "delta"), speakers: int = 12, takes: int = 1) -> Path:
    import csv

    import numpy as np

    from kws.audio import SAMPLE_RATE as SR
    from kws.audio import write_audio

    rows = []
    for w_i, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for s in range(speakers):
            for t in range(takes):
                rng = np.random.default_rng(100 * w_i + 10 * s + t)
                tt = np.arange(int(0.5 * SR)) / SR
                f0 = 200 + 150 * w_i + rng.uniform(-10, 10)
                x = 0.3 * np.sin(2 * np.pi * f0 * tt * (1 + 0.3 * w_i * tt)) + 0.01 * rng.standard_normal(len(tt))
                rel = f"{word}/s{s}_{t}.wav"
                write_audio(root / rel, x.astype(np.float32))
                rows.append([rel, "fake", word, f"fake{s}", "", "", "laptop", "isolated", "MIT"])
    with (root / "clips.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "source", "word", "speaker", "gender", "dialect", "channel", "context", "licence"])
        w.writerows(rows)
    return root


@pytest.fixture
def fake_pack():
    """Writes a real-speech pack layout (clips.csv, one chirp per word, speaker and take) at a root:
    ``fake_pack(root, words=..., speakers=12, takes=1)`` → root."""
    return _fake_pack


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Speech Commands-layout corpus: 6 words (with the similar pair
    "cat"/"bat") × 12 speakers, split 8/2/2 by speaker, 5 s noise files."""
    from kws.data.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("tiny_corpus")
    cfg = SynthConfig(
        words=TINY_WORDS, speakers=12, seed=0, validation_fraction=1 / 6, testing_fraction=1 / 6, noise_seconds=5.0
    )
    report = synthesize(cfg, root, progress=False)
    assert report["failed"] == 0, report["failures"]
    return root


@pytest.fixture(scope="session")
def onnx_embedder():
    """The bundled model on ONNX Runtime, one thread (what `kws serve` runs)."""
    from kws.embedder import load_embedder

    return load_embedder(backend="onnx", threads=1)


@pytest.fixture(scope="session")
def demo_bank_path(onnx_embedder, tmp_path_factory) -> Path:
    """The demo's three keywords, enrolled from their bundled enrolment clips."""
    import numpy as np

    from kws.bank import KeywordBank
    from kws.data.speech_commands import SpeechCommands
    from kws.demo import DEMO_DIR, KEYWORDS
    from kws.enroll import enroll

    data = SpeechCommands(DEMO_DIR, subset="training", words=list(KEYWORDS))
    bank = KeywordBank(onnx_embedder.model_id, onnx_embedder.dim)
    for word in KEYWORDS:
        idx = np.flatnonzero(data.labels == data.classes.index(word))
        bank.add(enroll(onnx_embedder, word, [data.audio(int(i)) for i in idx], bank=bank).keyword)
    path = tmp_path_factory.mktemp("serve") / "bank.json"
    bank.save(path)
    return path


@pytest.fixture(scope="session")
def demo_stream() -> tuple:
    """20 s of the demo keywords and distractors over noise (the enrolling speaker's other takes), and its keyword truth."""
    from kws.demo import DEMO_DIR, DISTRACTORS, KEYWORDS
    from kws.streams import build_stream

    audio, truth = build_stream(DEMO_DIR, list(KEYWORDS), list(DISTRACTORS), 20.0, seed=3)
    return audio, [t for t in truth if t.keyword]
