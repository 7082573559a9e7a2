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
    """20 s of the demo keywords and distractors over noise (other speakers than the enrolment's), and its keyword truth."""
    from kws.demo import DEMO_DIR, DISTRACTORS, KEYWORDS
    from kws.streams import build_stream

    audio, truth = build_stream(DEMO_DIR, list(KEYWORDS), list(DISTRACTORS), 20.0, seed=3)
    return audio, [t for t in truth if t.keyword]
