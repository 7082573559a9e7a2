"""The ONNX runtime path: OnnxEmbedder, its contract checks, banks across backends, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kws.bank import Keyword, KeywordBank
from kws.embedder import TorchEmbedder, load_embedder
from kws.errors import BankError, CheckpointError
from kws.onnx_runtime import OnnxEmbedder


@pytest.fixture(scope="module")
def exported(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The random model, its fp32 export and the espeak-ng clips (2 words x 3 speakers) it was checked on."""
    from kws.export import export_onnx, synthetic_clips
    from kws.model import load_model

    model = load_model(random_checkpoint)
    clips = synthetic_clips(n_words=2, n_speakers=3, seed=1)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, clips)
    return {"model": model, "path": path, "clips": clips}


def test_load_embedder_picks_onnx_and_reads_metadata(exported: dict) -> None:
    emb = load_embedder(exported["path"], threads=1)
    assert isinstance(emb, OnnxEmbedder)
    assert emb.model_id == exported["model"].model_id()
    assert (emb.dim, emb.window_samples, emb.sample_rate) == (128, 16000, 16000)
    assert emb.quantization == "none"


def test_embeddings_match_torch_and_are_unit_norm(exported: dict) -> None:
    onnx_emb = OnnxEmbedder(exported["path"], threads=1)
    torch_emb = TorchEmbedder(exported["model"])
    # Odd lengths exercise the shared centre-pad/crop of the Embedder base class.
    clips = [exported["clips"][0][:9000], exported["clips"][1], np.pad(exported["clips"][2], 3000)]
    got, want = onnx_emb(clips), torch_emb(clips)
    assert got.shape == (3, 128) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable ONNX model"),
        (b"this is not a protobuf \x00\x01\x02 at all" * 10, "not a readable ONNX model"),
    ],
)
def test_corrupt_file_is_a_checkpoint_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_embedder(path)


def test_truncated_export_is_a_checkpoint_error(exported: dict, tmp_path: Path) -> None:
    path = tmp_path / "truncated.onnx"
    data = exported["path"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        OnnxEmbedder(path)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        OnnxEmbedder(tmp_path / "nope.onnx")


def _identity_model(path: Path, input_name: str, metadata: dict[str, str]) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["embedding"])],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 128])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 128])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for k, v in metadata.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def test_contract_violations_are_refused(exported: dict, tmp_path: Path) -> None:
    good = OnnxEmbedder(exported["path"]).metadata
    cases = [
        ("audio", good, "one input named 'waveform'"),
        ("waveform", {}, "metadata lacks"),
        ("waveform", {**good, "format": "something-else"}, "metadata format"),
        ("waveform", {**good, "sample_rate": "8000"}, "sample_rate is 8000"),
        ("waveform", {**good, "embedding_dim": "64"}, "metadata says 64"),
        ("waveform", {**good, "format_version": "99"}, "version 99 is not supported"),
    ]
    for i, (name, meta, message) in enumerate(cases):
        path = tmp_path / f"m{i}.onnx"
        _identity_model(path, name, meta)
        with pytest.raises(CheckpointError, match=message):
            OnnxEmbedder(path)
    # The same graph with the full contract loads: the refusals above are about the contract.
    _identity_model(tmp_path / "ok.onnx", "waveform", good)
    assert OnnxEmbedder(tmp_path / "ok.onnx").dim == 128


def test_bank_from_torch_model_works_with_its_export(exported: dict, tmp_path: Path) -> None:
    clips = exported["clips"]  # speaker-major: rows 0,2,4 are word 0; rows 1,3,5 word 1
    torch_emb = TorchEmbedder(exported["model"])
    enrol = torch_emb(clips[[0, 2]])
    center = enrol.mean(axis=0)
    bank = KeywordBank(torch_emb.model_id, torch_emb.dim)
    bank.add(Keyword("word0", (center / np.linalg.norm(center))[None], threshold=0.5, samples=2))
    bank.save(tmp_path / "bank.json")

    onnx_emb = load_embedder(exported["path"])
    loaded = KeywordBank.load(tmp_path / "bank.json", model_id=onnx_emb.model_id)
    scores_onnx = loaded.score(onnx_emb(clips))
    scores_torch = bank.score(torch_emb(clips))
    assert np.abs(scores_onnx - scores_torch).max() <= 1e-4

    with pytest.raises(BankError, match="different models"):
        loaded.check_model("kws-0000000000000000")


NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys

    attempts = []

    class BlockTorch:
        # Records and refuses any attempt, even one wrapped in try/except ImportError.
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import numpy as np
    import kws, kws.audio, kws.bank, kws.detect
    from kws.bank import Keyword, KeywordBank

    model, bank_path, clips_path, out_bank = sys.argv[1:5]
    emb = kws.load_embedder(model, threads=1)
    clips = np.load(clips_path)
    bank = KeywordBank.load(bank_path, model_id=emb.model_id)
    # Enrolment-like: embed clips, add a keyword, save the bank.
    e = emb(clips[[1, 3]])
    c = e.mean(axis=0)
    bank.add(Keyword("word1", (c / np.linalg.norm(c))[None], threshold=0.5, samples=2))
    bank.save(out_bank)
    # Detection-like: slide a 1 s window in 100 ms hops over a stream of clips, score every hop.
    stream = np.concatenate(list(clips))
    starts = range(0, len(stream) - emb.window_samples + 1, 1600)
    scores = bank.score(emb(np.stack([stream[s : s + emb.window_samples] for s in starts])))
    print(json.dumps({
        "attempts": attempts,
        "torch_modules": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
        "names": bank.names,
        "scores": scores.tolist(),
    }))
    """
)


def test_onnx_path_never_imports_torch(exported: dict, tmp_path: Path) -> None:
    clips = exported["clips"]
    torch_emb = TorchEmbedder(exported["model"])
    center = torch_emb(clips[[0, 2]]).mean(axis=0)
    bank = KeywordBank(torch_emb.model_id, torch_emb.dim)
    bank.add(Keyword("word0", (center / np.linalg.norm(center))[None], threshold=0.5, samples=2))
    bank.save(tmp_path / "bank.json")
    np.save(tmp_path / "clips.npy", clips)
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH_SCRIPT)

    proc = subprocess.run(
        [sys.executable, str(script), str(exported["path"]), str(tmp_path / "bank.json"),
         str(tmp_path / "clips.npy"), str(tmp_path / "bank2.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [] and result["torch_modules"] == []
    assert result["names"] == ["word0", "word1"]

    # The scores computed without torch are the ones PyTorch gives.
    saved = KeywordBank.load(tmp_path / "bank2.json", model_id=torch_emb.model_id)
    stream = np.concatenate(list(clips))
    windows = np.stack([stream[s : s + 16000] for s in range(0, len(stream) - 16000 + 1, 1600)])
    expected = saved.score(torch_emb(windows))
    assert np.abs(np.array(result["scores"]) - expected).max() <= 1e-4


def test_commands_run_bundled_models_on_onnx_runtime(random_checkpoint: Path) -> None:
    import argparse

    from kws.cli._common import add_model_arguments, embedder_from_args

    def args(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_model_arguments(parser)
        return parser.parse_args([*argv, "--threads", "1"])

    assert embedder_from_args(args()).backend == "onnx"
    assert isinstance(embedder_from_args(args("--model", "scratch")), OnnxEmbedder)
    assert embedder_from_args(args("--backend", "torch")).backend == "torch"  # an explicit choice wins
    assert isinstance(embedder_from_args(args("--model", str(random_checkpoint))), TorchEmbedder)  # a .pt stays
