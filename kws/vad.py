"""Where the speech is in a clip: Silero VAD (MIT), run on ONNX Runtime.

An energy threshold takes a telephone line's hiss or a fan for speech, so a short
word recorded over a noisy line looks as long as the whole recording. Silero VAD
is a small network trained to tell speech from noise; its ONNX file comes from the
installed ``silero-vad`` package (loaded from where pip put it, never downloaded).
It scores 32 ms frames (512 samples at 16 kHz) with a recurrent state.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from kws.audio import SAMPLE_RATE
from kws.fileio import package_files

__all__ = ["PACKAGE", "SileroVad", "model_file", "speech_bounds"]

PACKAGE = "silero-vad"
FRAME = 512  # samples per scored frame at 16 kHz
CONTEXT = 64  # samples of the previous frame the model sees with each frame
THRESHOLD = 0.5  # speech probability above which a frame is speech
PAD_MS = 60.0  # kept either side of the speech: soft onsets and releases


def model_file() -> Path:
    """The installed Silero VAD model; :class:`CheckpointError` naming the package if it is missing."""
    return package_files("silero_vad", "data", ("silero_vad.onnx",), PACKAGE, "voice activity detection")[0]


class SileroVad:
    """Speech probability of each 32 ms frame of a 16 kHz clip."""

    def __init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file()), opts, providers=["CPUExecutionProvider"])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``(samples,)`` float32 at 16 kHz → ``(ceil(samples / 512),)`` speech probabilities."""
        x = np.asarray(x, dtype=np.float32)
        n = -(-len(x) // FRAME)
        padded = np.concatenate([np.zeros(CONTEXT, np.float32), x, np.zeros(n * FRAME - len(x), np.float32)])
        state = np.zeros((2, 1, 128), dtype=np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            frame = padded[i * FRAME : i * FRAME + FRAME + CONTEXT][None]
            prob, state = self.session.run(None, {"input": frame, "state": state, "sr": sr})
            out[i] = float(prob.reshape(-1)[0])
        return out


@functools.lru_cache(maxsize=1)
def _vad() -> SileroVad:
    return SileroVad()


def speech_bounds(x: np.ndarray, threshold: float = THRESHOLD, pad_ms: float = PAD_MS) -> tuple[int, int] | None:
    """``(start, stop)`` samples from the first to the last speech frame of ``x`` ``(samples,)``,
    widened by ``pad_ms`` either side; ``None`` when no frame is speech."""
    speech = np.flatnonzero(_vad().probabilities(x) >= threshold)
    if len(speech) == 0:
        return None
    pad = int(pad_ms * SAMPLE_RATE / 1000)
    return max(0, speech[0] * FRAME - pad), min(len(x), (speech[-1] + 1) * FRAME + pad)
