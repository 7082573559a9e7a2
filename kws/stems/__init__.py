"""Stems: what turns a waveform into the frame sequence a head pools into an embedding.

* ``scratch``: kws's own log-mel CNN (:mod:`kws.model`), trained by the recipe.
* ``speech-embedding``: Google's speech embedding pretrained on real speech
  (:mod:`kws.stems.speech_embedding`), frozen, under kws's head (:mod:`kws.head`).
"""

from __future__ import annotations

STEMS = ("scratch", "speech-embedding")

__all__ = ["STEMS"]
