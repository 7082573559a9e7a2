"""Run an exported model on ONNX Runtime, without PyTorch.

This module is the runtime half of the ONNX contract (``kws.export`` is the
other half, and imports the names below from here so that the contract lives
in one place). It imports only numpy and onnxruntime: an application that
enrols and detects keywords with an ``.onnx`` model never loads torch.

The contract of an exported model:

- input ``waveform``: float32 ``(batch, samples)``, 16 kHz, values in [-1, 1];
  ``batch`` and ``samples`` are dynamic, ``samples >= n_fft`` (400); the model
  was trained on ``window_samples`` (metadata) and :class:`OnnxEmbedder`
  centre-pads/crops to that length;
- output ``embedding``: float32 ``(batch, embedding_dim)``, unit L2 norm;
- metadata (``metadata_props``, all strings): see :data:`REQUIRED_METADATA`,
  plus ``kws_version``, ``frontend`` and ``encoder`` (config JSON) and
  ``quantization`` (``none`` or ``int8``).

A model over a pretrained stem is also exported as its *head* alone (format
``kws-head``): input ``frames`` float32 ``(batch, T, 96)``, the stem's frames;
output ``embedding``; metadata :data:`HEAD_METADATA` (``frames``: T of the model's own
window; a keyword longer than it runs the head over more frames: a head exported before
the frame axis was dynamic takes them through a copy of its graph made with the ``onnx``
package, the one place this module needs more than onnxruntime). The stem itself is loaded
from its installed package (:mod:`kws.stems.speech_embedding`), never copied:
this is what kws bundles, and what streams frame by frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kws.audio import SAMPLE_RATE
from kws.embedder import Embedder, StemEmbedder
from kws.errors import CheckpointError

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "HEAD_FORMAT_NAME", "HEAD_INPUT_NAME", "HEAD_METADATA", "INPUT_NAME",
    "OUTPUT_NAME", "OnnxEmbedder", "REQUIRED_METADATA", "head_embedder", "load_onnx", "open_session",
]

INPUT_NAME = "waveform"
OUTPUT_NAME = "embedding"
FORMAT_NAME = "kws-embedder"
FORMAT_VERSION = 1
# Keys an exported model must carry in its metadata_props.
REQUIRED_METADATA = ("format", "format_version", "sample_rate", "window_samples", "embedding_dim", "model_id")
HEAD_FORMAT_NAME = "kws-head"
HEAD_INPUT_NAME = "frames"
HEAD_METADATA = ("format", "format_version", "stem", "stem_id", "frames", "embedding_dim", "model_id")


def open_session(path: str | Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session over ``path``, with ``threads`` intra-op threads (``None``: one per core).

    Raises:
        CheckpointError: the file is missing or not a readable ONNX model.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model not found")
    if threads is not None and threads < 1:
        raise CheckpointError(f"threads must be at least 1, got {threads}")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        # One request at a time: inter-op threads would only add idle spinning.
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types for bad files
        raise CheckpointError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc).strip()[:300]}); "
            "re-create it with `kws export`"
        ) from exc


def load_onnx(path: str | Path, threads: int | None = None) -> Embedder:
    """The embedder of an exported model: a whole model (:class:`OnnxEmbedder`) or a head over a stem."""
    session = open_session(path, threads)
    if session.get_modelmeta().custom_metadata_map.get("format") == HEAD_FORMAT_NAME:
        return head_embedder(Path(path), session, threads)
    return OnnxEmbedder(path, threads=threads, session=session)


def head_embedder(path: Path, session, threads: int | None = None) -> StemEmbedder:
    """A :class:`~kws.embedder.StemEmbedder` over an exported head (format ``kws-head``).

    Raises:
        CheckpointError: the head breaks the contract, or was trained on other stem weights
            than the installed ones (or the stem's package is missing).
    """
    from kws.stems import speech_embedding

    meta = dict(session.get_modelmeta().custom_metadata_map)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a kws head model ({what}); export it with `kws export`")

    missing = [k for k in HEAD_METADATA if k not in meta]
    if missing:
        raise bad(f"metadata lacks {', '.join(missing)}")
    if meta["format_version"] != str(FORMAT_VERSION):
        raise bad(f"format version {meta['format_version']} (this kws reads {FORMAT_VERSION})")
    if meta["stem"] != speech_embedding.NAME:
        raise bad(f"unknown stem {meta['stem']!r}")
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != HEAD_INPUT_NAME or len(inputs[0].shape) != 3:
        raise bad(f"expected one input {HEAD_INPUT_NAME!r} (batch, frames, {speech_embedding.DIM})")
    if OUTPUT_NAME not in [o.name for o in session.get_outputs()]:
        raise bad(f"no output named {OUTPUT_NAME!r}")
    try:
        frames, dim = int(meta["frames"]), int(meta["embedding_dim"])
    except ValueError as exc:
        raise bad(f"non-integer metadata ({exc})") from exc
    installed = speech_embedding.stem_id()
    if meta["stem_id"] != installed:
        raise CheckpointError(
            f"{path}: the head was trained on stem {meta['stem_id']}, but the installed "
            f"{speech_embedding.PACKAGE} has {installed}; install the version it was trained with"
        )

    fixed = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else None
    sessions = {True: session}  # by whether the exported session takes the frames as they come

    def run(x: np.ndarray) -> np.ndarray:
        # A keyword longer than the model's window runs the head over more frames (kws.embedder,
        # Embedder.at_frames); a head exported with its frame count fixed gets a session that takes any.
        as_exported = fixed is None or x.shape[1] == fixed
        if as_exported not in sessions:
            sessions[as_exported] = _any_frames_session(path, threads)
        return sessions[as_exported].run([OUTPUT_NAME], {HEAD_INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return StemEmbedder(run, frames, dim, meta["model_id"], threads=threads)


def _any_frames_session(path: Path, threads: int | None):  # -> onnxruntime.InferenceSession
    """A session over the head ``path`` whose input takes any number of frames (older exports fixed
    it to the head's window; the head's layers themselves take any). Needs the ``onnx`` package."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "frames"
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class OnnxEmbedder(Embedder):
    """Embedder over an exported ``.onnx`` model, on ONNX Runtime's CPU provider.

    Args:
        path: a model written by ``kws export``.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per core).
        session: an already opened session over ``path``.

    Raises:
        CheckpointError: the file is missing, is not ONNX, or breaks the contract
            (input/output names, dtypes, ranks, metadata).
    """

    backend = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, session=None) -> None:
        self.path = Path(path)
        self.session = session if session is not None else open_session(path, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_contract()
        self.window_samples = int(self.metadata["window_samples"])
        self.dim = int(self.metadata["embedding_dim"])
        self.model_id = self.metadata["model_id"]
        self.quantization = self.metadata.get("quantization", "none")
        if "max_batch" in self.metadata:
            # A composed stem model embeds one clip a run (see kws.export.export_composed).
            self.batch_size = int(self.metadata["max_batch"])

    def _check_contract(self) -> None:
        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{self.path}: not a kws embedding model ({what}); export it with `kws export`")

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise bad(f"expected one input named {INPUT_NAME!r}, found {[i.name for i in inputs]}")
        if inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2:
            raise bad(f"input must be float32 (batch, samples), found {inputs[0].type} {inputs[0].shape}")
        out = next((o for o in outputs if o.name == OUTPUT_NAME), None)
        if out is None:
            raise bad(f"no output named {OUTPUT_NAME!r}, found {[o.name for o in outputs]}")
        if out.type != "tensor(float)" or len(out.shape) != 2:
            raise bad(f"output must be float32 (batch, dim), found {out.type} {out.shape}")
        missing = [k for k in REQUIRED_METADATA if k not in self.metadata]
        if missing:
            raise bad(f"metadata lacks {', '.join(missing)}")
        if self.metadata["format"] != FORMAT_NAME:
            raise bad(f"metadata format is {self.metadata['format']!r}")
        if self.metadata["format_version"] != str(FORMAT_VERSION):
            raise CheckpointError(
                f"{self.path}: export format version {self.metadata['format_version']} is not supported "
                f"(this kws reads version {FORMAT_VERSION}); re-export the model with this kws"
            )
        try:
            rate = int(self.metadata["sample_rate"])
            window = int(self.metadata["window_samples"])
            dim = int(self.metadata["embedding_dim"])
        except ValueError as exc:
            raise bad(f"non-integer metadata ({exc})") from exc
        if rate != SAMPLE_RATE:
            raise bad(f"sample_rate is {rate}, kws works at {SAMPLE_RATE} Hz")
        if window < 1 or dim < 1:
            raise bad(f"window_samples={window}, embedding_dim={dim}")
        if isinstance(out.shape[1], int) and out.shape[1] != dim:
            raise bad(f"output has {out.shape[1]} dimensions but metadata says {dim}")

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
