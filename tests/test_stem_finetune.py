"""Fine-tuning the speech-embedding stem: its PyTorch copy, checkpoints that carry it, the mel cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kws.stems import speech_embedding as se
from kws.stems.speech_embedding_torch import TorchSpeechEmbedding


@pytest.fixture(scope="module")
def stem() -> se.SpeechEmbeddingStem:
    return se.SpeechEmbeddingStem(threads=1)


def _demo_clips(window: int) -> np.ndarray:
    """The bundled demo's recorded words, one per folder, as ``(n, window)``."""
    from kws.audio import load_audio, pad_or_crop
    from kws.embedder import ASSETS

    folders = sorted(p for p in (ASSETS / "demo").iterdir() if p.is_dir())
    return np.stack([pad_or_crop(load_audio(min(f.glob("*.wav"))), window) for f in folders])


def test_torch_stem_reproduces_onnx_runtime(stem):
    frames = 13
    clips = _demo_clips(se.samples_for(frames))
    reference = stem(clips)  # (n, 13, 96): the stem on each frame's 76 mel frames, on ONNX Runtime
    mel = stem.mel(clips)
    assert mel.shape[1] == se.WINDOW_FRAMES + se.STRIDE * (frames - 1)
    with torch.inference_mode():
        got = TorchSpeechEmbedding().eval()(torch.from_numpy(mel)).numpy()
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 1e-4


def test_train_last_freezes_all_but_the_last_convolutions():
    torch_stem = TorchSpeechEmbedding()
    torch_stem.train_last(2)
    trainable = [c.weight.requires_grad for c in torch_stem.convs]
    assert len(trainable) == 20 and trainable == [False] * 18 + [True] * 2


def _tuned_checkpoint(path, frames: int = 4):
    """A model with a tuned stem (one of its last convolutions moved) and a random residual; and the same
    head over the installed stem."""
    from kws.head import HeadConfig
    from kws.model import HeadModel, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    tuned = HeadModel(ModelConfig(stem="speech-embedding", head=HeadConfig(frames=frames), tuned_stem=True))
    torch.nn.init.normal_(tuned.head.project.weight, std=0.05)
    with torch.no_grad():
        tuned.stem.convs[-2].weight.add_(0.05 * torch.randn_like(tuned.stem.convs[-2].weight))
    frozen = HeadModel(ModelConfig(stem="speech-embedding", head=HeadConfig(frames=frames)))
    frozen.head.load_state_dict(tuned.head.state_dict())
    save_checkpoint(path / "tuned.pt", tuned)
    save_checkpoint(path / "frozen.pt", frozen)
    return path / "tuned.pt", path / "frozen.pt"


def test_checkpoint_with_a_tuned_stem_round_trips_under_its_own_id(tmp_path):
    from kws.bank import Keyword, KeywordBank
    from kws.embedder import load_embedder
    from kws.errors import KwsError
    from kws.export import load_source_model

    tuned_path, frozen_path = _tuned_checkpoint(tmp_path)
    tuned, frozen = load_embedder(tuned_path, threads=1), load_embedder(frozen_path, threads=1)
    assert tuned.model_id != frozen.model_id
    clips = _demo_clips(tuned.window_samples)[:4]
    a, b = tuned(clips), frozen(clips)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() > 1e-3  # the tuned stem's weights are used, not the installed ones
    assert np.allclose(load_embedder(tuned_path, threads=1)(clips), a, atol=1e-6)

    bank = KeywordBank(frozen.model_id, frozen.dim)
    bank.add(Keyword("word", b[:1], 0.5, 1))
    bank.save(tmp_path / "bank.json")
    with pytest.raises(KwsError, match="model"):
        KeywordBank.load(tmp_path / "bank.json", model_id=tuned.model_id)
    with pytest.raises(KwsError, match="fine-tuned stem"):
        load_source_model(tuned_path)  # kws export would run the installed stem instead

    # Streaming runs the tuned stem too: the last hop's embedding is the window's (a window of
    # sound throughout: the mel model floors digital silence relative to its whole input).
    stream = tuned.stream(se.FRAME_SAMPLES)
    noise = 0.01 * np.random.default_rng(0).standard_normal(2 * tuned.window_samples).astype(np.float32)
    audio = np.concatenate(clips[:2]) + noise
    for k in range(len(audio) // se.FRAME_SAMPLES):
        stream.update(audio[k * se.FRAME_SAMPLES : (k + 1) * se.FRAME_SAMPLES], np.empty(0))
    end = (len(audio) // se.FRAME_SAMPLES) * se.FRAME_SAMPLES
    assert np.abs(stream.embed() - tuned(audio[end - tuned.window_samples : end][None])).max() < 1e-4


def test_stem_fine_tuning_trains_on_a_mel_cache_that_is_rebuilt_when_corrupt(tmp_path, fake_pack, caplog):
    from kws.embedder import load_embedder
    from kws.model import load_model
    from kws.train import train
    from kws.train_config import load_config

    root = fake_pack(tmp_path / "pack")
    cache = tmp_path / "cache"

    def run(out: str, layers: int, init: str = "") -> list[dict]:
        cfg = load_config(None, [f'model.init="{init}"',
            'data.root=""', f'data.real_pack="{root}"', f'data.cache_dir="{cache}"', "data.real_heldout_fraction=0.4",
            'model.stem="speech-embedding"', "model.head_frames=2", f"model.stem_layers={layers}", "model.head_whiten=0.5", "optim.stem_lr=1e-3",
            "train.p=4", "train.k=2", "train.epochs=1", "train.steps_per_epoch=2", f'train.out_dir="{tmp_path / out}"',
            "eval.n_way=2", "eval.episodes=5", "eval.eer_episodes=5", "eval.shots=[1]", "eval.best_shot=1",
        ])  # fmt: skip
        rows: list[dict] = []
        train(cfg, progress=False, on_epoch=rows.append)
        return rows

    frozen_rows = run("frozen", 0)
    rows = run("tuned", 2)
    mel_caches = sorted(cache.glob("mel-*.npz"))
    assert [p.name.split("-")[1] for p in mel_caches] == ["pack", "pack"]  # its held-out and training sets
    with np.load(mel_caches[0]) as z:
        assert json.loads(str(z["key"]))["features"] == "mel" and z["frames"].shape[-2:] == (76 + 8, 32)
    # The untrained model over the tuned stem's copy scores what it scores over the installed stem.
    for key in ("real_fewshot_1", "real_eer"):
        assert rows[0][key] == pytest.approx(frozen_rows[0][key], abs=1e-6)

    model = load_model(tmp_path / "tuned" / "last.pt")
    start = TorchSpeechEmbedding()
    assert not torch.equal(model.stem.convs[-1].weight, start.convs[-1].weight)  # the last layers learned
    assert torch.equal(model.stem.convs[0].weight, start.convs[0].weight)  # the others did not
    assert not torch.allclose(model.whiten_map, torch.eye(96))  # whitened over the tuned stem's frames
    assert load_embedder(tmp_path / "tuned" / "best.pt").model_id == model.model_id()

    data = bytearray(mel_caches[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    mel_caches[0].write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = run("again", 2, init=str(tmp_path / "tuned" / "last.pt"))
    assert "rebuilding" in caplog.text
    # Started from the tuned run (stem included), on the rebuilt cache: where that run ended.
    for key in ("real_fewshot_1", "real_eer"):
        assert again[0][key] == pytest.approx(rows[-1][key], abs=1e-6)
    with np.load(mel_caches[0]) as z:  # rebuilt whole
        assert json.loads(str(z["key"]))["features"] == "mel"
