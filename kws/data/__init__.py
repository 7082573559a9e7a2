"""Corpora for training and evaluation: Speech Commands, the synthetic corpus,
augmentation and batch samplers.

Names are re-exported lazily, so that ``kws.data.synth`` (and ``kws synth``)
work without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SynthConfig": "synth",
    "SpeakerSpec": "synth",
    "synthesize": "synth",
    "load_vocab": "synth",
    "make_speakers": "synth",
    "speak": "synth",
    "ENGINES": "synth",
    "installed_engines": "synth",
    "Clip": "speech_commands",
    "SpeechCommands": "speech_commands",
    "speaker_of": "speech_commands",
    "list_words": "speech_commands",
    "background_noise": "speech_commands",
    "download_speech_commands": "speech_commands",
    "AugmentConfig": "augment",
    "Augmenter": "augment",
    "ConditionsConfig": "augment",
    "augment_conditions": "augment",
    "make_rir_bank": "augment",
    "load_noise_folder": "augment",
    "codec_roundtrip": "augment",
    "PKSampler": "sampler",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
