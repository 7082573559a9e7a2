"""The embedder: the one seam between models and everything that uses them.

An embedder maps a batch of 16 kHz waveforms to L2-normalised embeddings.
Enrolment, evaluation and detection take an embedder and never care whether
PyTorch or ONNX Runtime computes it. This module imports neither at load time:
the ONNX path must run without torch installed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, pad_or_crop
from kws.errors import CheckpointError, KwsError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default.pt"
DEFAULT_ONNX = ASSETS / "default.onnx"
BACKENDS = ("torch", "onnx")


class Embedder(ABC):
    """Callable: ``(batch, samples)`` float32 at 16 kHz → ``(batch, dim)`` unit-norm float32.

    Clips shorter or longer than :attr:`window_samples` are centre-padded or
    centre-cropped. A list of 1-D arrays of different lengths is accepted too.
    """

    sample_rate: int = SAMPLE_RATE
    window_samples: int
    dim: int
    model_id: str
    batch_size: int = 64

    def __call__(self, waveforms: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        batch = self.prepare(waveforms)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self._embed(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def prepare(self, waveforms: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Validate and centre-pad/crop input into ``(batch, window_samples)`` float32."""
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            raise KwsError("embedder expects a batch (batch, samples); wrap a single clip as x[None]")
        if isinstance(waveforms, np.ndarray) and waveforms.ndim != 2:
            raise KwsError(f"embedder expects (batch, samples) audio, got shape {waveforms.shape}")
        clips = [np.asarray(w, dtype=np.float32) for w in waveforms]
        for c in clips:
            if c.ndim != 1:
                raise KwsError(f"each clip must be 1-D mono audio, got shape {c.shape}")
            if not np.all(np.isfinite(c)):
                raise KwsError("audio contains NaN or infinite samples")
        if not clips:
            return np.zeros((0, self.window_samples), dtype=np.float32)
        return np.stack([pad_or_crop(c, self.window_samples) for c in clips])

    @abstractmethod
    def _embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed ``(batch, window_samples)`` float32 → ``(batch, dim)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dim={self.dim}, window={self.window_samples})"


class TorchEmbedder(Embedder):
    """Embedder over a :class:`kws.model.KeywordModel` (CPU by default)."""

    def __init__(self, model, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model.eval().to(device)
        self.device = device
        self.window_samples = model.cfg.window_samples
        self.dim = model.dim
        self.model_id = model.model_id()

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()


def load_embedder(
    model: str | Path | None = None, backend: str | None = None, threads: int | None = None
) -> Embedder:
    """Load an embedder.

    Args:
        model: a checkpoint (``.pt``), an exported ``.onnx`` file, or ``None`` for
            the bundled default model.
        backend: ``"torch"``, ``"onnx"`` or ``None`` (chosen from the file: ``.onnx``
            runs on ONNX Runtime, anything else on PyTorch).
        threads: intra-op threads for the backend (``None``: its default).
    """
    if backend is not None and backend not in BACKENDS:
        raise KwsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if model is None:
        model = DEFAULT_ONNX if backend == "onnx" else DEFAULT_CHECKPOINT
        if not Path(model).is_file():
            raise CheckpointError(
                f"the bundled default model is missing ({model}); reinstall kws or pass a model path"
            )
    path = Path(model)
    if backend is None:
        backend = "onnx" if path.suffix == ".onnx" else "torch"
    if backend == "onnx":
        if path.suffix != ".onnx":
            raise CheckpointError(f"{path}: the onnx backend needs an .onnx file; make one with `kws export`")
        from kws.onnx_runtime import OnnxEmbedder

        return OnnxEmbedder(path, threads=threads)
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path}: an ONNX model runs on the onnx backend, not torch")
    from kws.model import load_model

    return TorchEmbedder(load_model(path), threads=threads)
