"""Keywords longer than the model's window: their own window, from enrolment to the bank, the detector and serve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kws.audio import SAMPLE_RATE as SR
from kws.bank import Keyword, KeywordBank
from kws.detect import Detector, DetectorConfig
from kws.enroll import EnrollConfig, enroll
from kws.errors import BankError, EnrollmentError, KwsError
from kws.stems import speech_embedding as se

# Energy trimming: the synthetic "phrases" below are tones, which a voice detector need not hear as speech.
TRIM = EnrollConfig(vad=False)
FRAMES = 4  # the tiny model's own window: 4 stem frames, 1.02 s


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A small head (random weights) over the speech-embedding stem, with a window of 4 stem frames."""
    from kws.embedder import load_embedder
    from kws.head import HeadConfig
    from kws.model import HeadModel, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    model = HeadModel(ModelConfig(stem="speech-embedding", head=HeadConfig(frames=FRAMES)))
    torch.nn.init.normal_(model.head.project.weight, std=0.05)
    path = tmp_path_factory.mktemp("head") / "head.pt"
    save_checkpoint(path, model)
    return load_embedder(path, threads=1)


def _phrase(seconds: float, seed: int, lead: float = 0.3) -> np.ndarray:
    """Two tone "words" with a 150 ms quieter gap, ``seconds`` of sound in all, between ``lead`` s of silence.

    The gap and the noise stay well above the mel model's floor (80 dB below the loudest sample
    of what it is given): a stream and a whole window then give the same stem frames.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = np.sin(2 * np.pi * (180 + 120 * np.sin(2 * np.pi * 0.9 * t) + 20 * seed) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    gap = slice(n // 2 - int(0.075 * SR), n // 2 + int(0.075 * SR))
    x[gap] *= 0.05
    x = 0.2 * x + 0.005 * rng.standard_normal(n)
    pad = np.zeros(int(lead * SR))
    return np.concatenate([pad, x, pad]).astype(np.float32)


def _impostors(dim: int) -> np.ndarray:
    v = np.random.default_rng(9).standard_normal((200, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_phrase_longer_than_the_window_enrols_at_a_window_of_its_own(embedder):
    clips = [_phrase(1.5, s) for s in range(3)]
    result = enroll(embedder, "smart mirror", clips, impostors=_impostors(embedder.dim), config=TRIM, force=True)
    kw = result.keyword
    # The fewest stem frames whose window holds the speech plus the margin: more than the model's.
    want = embedder.frames_to_hold(int((1.5 + TRIM.window_margin_s) * SR))
    assert kw.frames == want and want > FRAMES
    assert kw.info["window"]["frames"] == want and "model's window" in kw.info["window"]["impostors_at"]
    # Its embeddings are at that window: each clip's speech centred in it.
    at = embedder.at_frames(want)
    assert at.window_samples == se.samples_for(want) > embedder.window_samples
    from kws.enroll import clip_speech
    from kws.audio import pad_or_crop

    speech, _ = clip_speech(clips, SR, config=TRIM)
    own = at(np.stack([pad_or_crop(s, at.window_samples) for s in speech]))
    assert np.allclose(kw.positives, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-5)
    # A one-word keyword keeps the model's window, and no field in the bank.
    short = enroll(embedder, "go", [_phrase(0.5, s) for s in range(3)], impostors=_impostors(embedder.dim),
                   config=TRIM, force=True).keyword  # fmt: skip
    assert short.frames is None and "frames" not in short.to_json()


def test_beyond_the_longest_keyword_is_refused_and_so_is_a_budget(embedder):
    with pytest.raises(EnrollmentError, match=r"clip 2: the speech lasts 2\.\d\d s .* 2\.00 s a keyword may last"):
        enroll(embedder, "too long", [_phrase(1.5, 0), _phrase(2.3, 1)], impostors=_impostors(embedder.dim), config=TRIM)
    with pytest.raises(EnrollmentError, match="without --fa-per-hour"):
        enroll(embedder, "smart mirror", [_phrase(1.5, 0)], impostors=_impostors(embedder.dim), config=TRIM,
               fa_per_hour=1.0)  # fmt: skip


def test_a_model_with_a_fixed_window_cannot_take_another(random_checkpoint):
    from kws.embedder import load_embedder

    scratch = load_embedder(random_checkpoint)
    assert scratch.at_frames(None) is scratch
    with pytest.raises(KwsError, match="fixed 1.00 s window"):
        scratch.at_frames(17)
    bank = KeywordBank(scratch.model_id, scratch.dim)
    bank.add(Keyword("smart mirror", np.eye(scratch.dim, dtype=np.float32)[:1], 0.5, 3, frames=17))
    with pytest.raises(KwsError, match="fixed 1.00 s window"):
        Detector(scratch, bank)


def _bank_file(tmp_path, frames) -> tuple:
    bank = KeywordBank("m", 4)
    bank.add(Keyword("go", np.eye(4, dtype=np.float32)[:1], 0.5, 3))
    bank.add(Keyword("smart mirror", np.eye(4, dtype=np.float32)[1:2], 0.5, 3, frames=17))
    path = tmp_path / "bank.json"
    bank.save(path)
    d = json.loads(path.read_text())
    if frames == "absent":
        del d["keywords"]["smart mirror"]["frames"]
    else:
        d["keywords"]["smart mirror"]["frames"] = frames
    path.write_text(json.dumps(d))
    return path, d


def test_the_window_round_trips_and_old_banks_keep_the_models(tmp_path, capsys):
    from kws.cli import main

    path, d = _bank_file(tmp_path, 17)
    assert "frames" not in d["keywords"]["go"]  # a keyword at the model's window is stored as before
    bank = KeywordBank.load(path)
    assert bank["smart mirror"].frames == 17 and bank["go"].frames is None
    assert bank.windows == [None, 17]
    assert main(["bank", "list", "--bank", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[-1] for ln in lines[-2:]] == ["model's", "frames"] and "17 stem frames" in lines[-1]
    path, _ = _bank_file(tmp_path, "absent")  # a bank from before: every keyword at the model's window
    old = KeywordBank.load(path)
    assert old["smart mirror"].frames is None and old.windows == [None]
    assert json.loads(path.read_text()) == old.to_json()


@pytest.mark.parametrize("bad", [0, -3, 17.5, "17", True, 1000, [17]])
def test_a_malformed_window_is_refused_on_load(tmp_path, bad):
    path, _ = _bank_file(tmp_path, bad)
    with pytest.raises(BankError, match=r"'smart mirror': its window, frames=.*re-enrol"):
        KeywordBank.load(path)


def test_each_keyword_is_scored_on_the_embedding_at_its_own_window():
    bank = KeywordBank("m", 2)
    bank.add(Keyword("go", np.array([[1.0, 0.0]], np.float32), 0.5, 3))
    bank.add(Keyword("smart mirror", np.array([[0.0, 1.0]], np.float32), 0.5, 3, frames=17))
    at_model, at_17 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert np.allclose(bank.score(np.stack([at_model, at_17])[None]), [[1.0, 1.0]])
    assert np.allclose(bank.score(np.stack([at_17, at_model])[None], windows=[17, None]), [[1.0, 1.0]])
    with pytest.raises(BankError, match="'smart mirror' .*own"):
        bank.score(at_model[None])  # one embedding at the model's window cannot score the long keyword


def test_the_streamed_embedding_at_each_window_equals_the_window_embedded_offline(embedder):
    long = embedder.frames_to_hold(int(1.8 * SR))
    path = embedder.stream(se.FRAME_SAMPLES, [None, long])
    audio = np.concatenate([_phrase(1.5, 4, lead=0.0), _phrase(1.2, 5, lead=0.0)])
    padded = np.concatenate([np.zeros(se.samples_for(long), np.float32), audio])
    checked = 0
    for k in range(1, len(audio) // se.FRAME_SAMPLES + 1):
        new = audio[(k - 1) * se.FRAME_SAMPLES : k * se.FRAME_SAMPLES]
        path.update(new, new)
        end = len(padded) - len(audio) + k * se.FRAME_SAMPLES
        if k % 3 or k * se.FRAME_SAMPLES < se.samples_for(long):  # windows with no digital silence in them
            continue
        got = path.embed()
        for row, frames in zip(got, (None, long)):
            at = embedder.at_frames(frames)
            assert np.abs(row - at(padded[end - at.window_samples : end][None])[0]).max() < 1e-4
        checked += 1
    assert checked >= 3


def test_detector_and_serve_fire_a_long_keyword_at_the_end_of_its_window(embedder, tmp_path):
    rng = np.random.default_rng(0)
    phrase = _phrase(1.7, 6, lead=0.0)
    stream = np.concatenate([np.zeros(2 * SR, np.float32), phrase, np.zeros(2 * SR, np.float32)])
    stream += (1e-3 * rng.standard_normal(len(stream))).astype(np.float32)
    long = embedder.frames_to_hold(len(phrase) + int(0.3 * SR))
    cfg = DetectorConfig(hop_ms=80, smoothing=1, vad=False, threshold_offset=0.0)
    hop = cfg.hop_samples()
    # The keyword is the stream's window of ``long`` frames that ends 240 ms after the phrase, beside
    # a keyword at the model's window that never fires.
    end = (2 * SR + len(phrase)) // hop * hop + 3 * hop
    at = embedder.at_frames(long)
    bank = KeywordBank(embedder.model_id, embedder.dim)
    bank.add(Keyword("go", embedder(_phrase(0.5, 7)[None]), 1.0, 3))
    bank.add(Keyword("smart mirror", at(stream[end - at.window_samples : end][None]), 0.5, 3, frames=long))
    det = Detector(embedder, bank, cfg)
    scores = {round(t * SR): s[1] for t, s in det.hop_scores(stream)}
    assert scores[end] > 0.9999  # the streamed window is the one embedded offline
    # Fires on that window alone: the event's time is the end of the long window.
    bank["smart mirror"].threshold = (1.0 + max(v for t, v in scores.items() if t != end)) / 2
    det = Detector(embedder, bank, cfg)
    events = det.process(stream)
    assert [(e.keyword, round(e.time * SR)) for e in events] == [("smart mirror", end)]
    # Its event clip holds that long window, and feedback embeds it at the keyword's window.
    from kws.events import EventRecorder
    from kws.feedback import clip_windows

    recorder = EventRecorder(tmp_path, embedder.window_samples, embedder.model_id, keyword_windows=det.keyword_windows)
    (wav,) = recorder.feed(stream, events) + recorder.close()
    side = json.loads(wav.with_suffix(".json").read_text())
    assert round((side["window_end_s"] - side["window_start_s"]) * SR) == at.window_samples
    emb, how = clip_windows(embedder, bank["smart mirror"], wav, further=False)
    assert "fired" in how and float(emb[0] @ bank["smart mirror"].centers[0]) > 0.999

    from kws.serve import BatchEngine
    from tests.test_serve import engine_events

    # float_to_pcm16 rounds the audio: the events, not the last digit of the scores, must agree.
    assert engine_events(BatchEngine(embedder, cfg), bank, stream) == [(e.keyword, round(e.time, 3)) for e in events]


def test_the_bundled_heads_on_onnx_runtime_take_a_longer_window(onnx_embedder):
    """The bundled head was exported with its frame count fixed; a longer window runs it all the same,
    as PyTorch does."""
    from kws.embedder import load_embedder

    torch_embedder = load_embedder(backend="torch", threads=1)
    clips = np.stack([_phrase(1.6, s, lead=0.1) for s in range(2)])
    long = onnx_embedder.frames + 4
    got, want = onnx_embedder.at_frames(long)(clips), torch_embedder.at_frames(long)(clips)
    assert np.abs(got - want).max() < 1e-4
    # Not the model's own window: the same clips cropped to it embed otherwise.
    assert np.abs(got - onnx_embedder(clips)).max() > 1e-2


def test_stream_evaluation_embeds_every_window_of_the_bank_and_keeps_them(embedder, tmp_path):
    from kws.streams import StreamHops, embed_stream

    audio = np.concatenate([_phrase(1.6, 8), _phrase(0.6, 9)])
    long = embedder.frames_to_hold(int(2.0 * SR))
    bank = KeywordBank(embedder.model_id, embedder.dim)
    bank.add(Keyword("go", embedder(_phrase(0.5, 7)[None]), 0.5, 3))
    bank.add(Keyword("smart mirror", embedder.at_frames(long)(_phrase(1.6, 8)[None]), 0.5, 3, frames=long))
    cfg = DetectorConfig(vad=False)
    hops = embed_stream(embedder, bank, audio, cfg)
    assert hops.embeddings.shape[1:] == (2, embedder.dim) and hops.windows == [None, long]
    hops.save(tmp_path / "hops.npz")
    loaded = StreamHops.load(tmp_path / "hops.npz")
    assert loaded.windows == [None, long]
    want = [s for _, s in Detector(embedder, bank, cfg).hop_scores(audio)]
    assert np.allclose(np.stack(loaded.scores(bank)), np.stack(want), atol=1e-6)
