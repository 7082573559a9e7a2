"""ONNX export: contract, parity with PyTorch on espeak-ng speech, int8, atomic refusal, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kws.audio import write_audio
from kws.cli import main
from kws.errors import KwsError
from kws.errors import ExportError
from kws.export import clips_from_folder, export_onnx, int8_path, quantize_int8, synthetic_clips
from kws.features import FrontendConfig
from kws.model import KeywordModel, load_model
from kws.onnx_runtime import OnnxEmbedder


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """espeak-ng speech: 3 training words x 4 synthetic speakers, ``(12, 16000)``."""
    return synthetic_clips(n_words=3, n_speakers=4, seed=2)


@pytest.fixture(scope="module")
def exports(random_checkpoint: Path, speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict:
    model = load_model(random_checkpoint)
    path = tmp_path_factory.mktemp("export") / "m.onnx"
    fp32 = export_onnx(model, path, speech)
    int8 = quantize_int8(path, int8_path(path), speech)
    return {"model": model, "path": path, "int8": int8_path(path), "fp32_report": fp32, "int8_report": int8}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model: KeywordModel, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_export_writes_contract_and_metadata(exports: dict) -> None:
    model, path = exports["model"], exports["path"]
    assert path.is_file() and exports["fp32_report"].size_bytes == path.stat().st_size
    sess = _session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("waveform", "tensor(float)", ["batch", "samples"])
    assert (out.name, out.type, out.shape) == ("embedding", "tensor(float)", ["batch", 128])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["model_id"] == model.model_id()
    assert (meta["sample_rate"], meta["window_samples"], meta["embedding_dim"]) == ("16000", "16000", "128")
    assert meta["kws_version"] and meta["quantization"] == "none"
    assert FrontendConfig(**json.loads(meta["frontend"])) == model.cfg.frontend
    assert json.loads(meta["encoder"])["embedding_dim"] == 128


def test_parity_on_speech_with_dynamic_batch_and_length(exports: dict, speech: np.ndarray) -> None:
    model, sess = exports["model"], _session(exports["path"])
    for batch in (speech[:1], speech[:5], speech):
        got = sess.run(["embedding"], {"waveform": batch})[0]
        assert got.shape == (len(batch), 128)
        assert np.abs(got - _torch(model, batch)).max() <= 1e-4
    # Other lengths than the window run too (samples is a dynamic axis).
    short = np.ascontiguousarray(speech[:3, 2000:14000])
    assert np.abs(sess.run(["embedding"], {"waveform": short})[0] - _torch(model, short)).max() <= 1e-4
    assert exports["fp32_report"].max_abs_diff <= 1e-4


def test_int8_is_smaller_and_close_to_fp32(exports: dict, speech: np.ndarray) -> None:
    fp32, int8 = OnnxEmbedder(exports["path"]), OnnxEmbedder(exports["int8"])
    assert int8.quantization == "int8" and int8.model_id == fp32.model_id
    assert exports["int8"].stat().st_size < 0.7 * exports["path"].stat().st_size
    # Different clips from the calibration ones: a short-crop of each and some noise.
    rng = np.random.default_rng(0)
    clips = np.concatenate([np.roll(speech, 2400, axis=1), 0.05 * rng.standard_normal((2, 16000))])
    cosine = np.sum(fp32(clips) * int8(clips), axis=1)
    assert cosine.min() > 0.95
    assert not np.allclose(fp32(clips), int8(clips), atol=1e-6)  # it really is quantised


def test_failed_parity_writes_nothing_and_keeps_old_file(exports: dict, speech: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError, match="not written"):
        export_onnx(exports["model"], path, speech[:2], tolerance=0.0)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_int8_refused_when_too_far_from_fp32(exports: dict, speech: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="strays from fp32"):
        quantize_int8(exports["path"], tmp_path / "q.onnx", speech[:4], min_cosine=1.0001)
    assert list(tmp_path.iterdir()) == []


def test_bad_check_clips_are_refused(exports: dict, tmp_path: Path) -> None:
    with pytest.raises(KwsError, match="check clips"):
        export_onnx(exports["model"], tmp_path / "m.onnx", np.zeros((2, 8000), np.float32))
    with pytest.raises(KwsError, match="no audio files"):
        clips_from_folder(tmp_path, 4, 16000)


def test_cli_export_with_clips_folder(random_checkpoint: Path, speech: np.ndarray, tmp_path: Path, capsys) -> None:
    for i, clip in enumerate(speech[:4]):
        write_audio(tmp_path / "clips" / f"c{i}.wav", clip)
    out = tmp_path / "cli.onnx"
    code = main(["export", str(out), "--checkpoint", str(random_checkpoint), "--clips", str(tmp_path / "clips"), "--int8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "max abs difference to PyTorch on 4 clips" in printed and "cli.int8.onnx" in printed
    assert OnnxEmbedder(out).model_id == OnnxEmbedder(tmp_path / "cli.int8.onnx").model_id


def test_cli_export_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path / "m.onnx"), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
