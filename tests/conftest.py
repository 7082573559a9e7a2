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
