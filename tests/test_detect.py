"""Streaming detector: incremental features, scores, event timing, smoothing, refractory, gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kws.bank import Keyword, KeywordBank
from kws.detect import Detector, DetectorConfig, Trigger, detect_stream
from kws.embedder import Embedder, IncrementalLogMel, TorchEmbedder, WaveformWindow
from kws.errors import BankError, KwsError

SR = 16000


@pytest.fixture(scope="module")
def embedder(random_checkpoint) -> TorchEmbedder:
    from kws.embedder import load_embedder

    return load_embedder(random_checkpoint, threads=1)


class PlainEmbedder(Embedder):
    """The same model behind the generic interface only (as the ONNX embedder is)."""

    def __init__(self, inner: TorchEmbedder) -> None:
        self.inner = inner
        self.window_samples, self.dim, self.model_id = inner.window_samples, inner.dim, inner.model_id

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        return self.inner._embed(batch)


def _word(f0: float, f1: float) -> np.ndarray:
    """A 0.5 s chirp with harmonics, centred in a 1 s clip."""
    t = np.arange(SR // 2) / SR
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2)
    tone = np.sin(np.pi * t / 0.5) * (np.sin(phase) + 0.5 * np.sin(3 * phase))
    return np.pad(0.3 * tone, (SR // 4, SR // 4)).astype(np.float32)


@pytest.fixture(scope="module")
def scene(embedder):
    """A stream with clips of two 'words' among noise, a bank made from those exact clips, and the truth."""
    rng = np.random.default_rng(1)
    clips = {"up": _word(300, 900), "down": _word(1200, 400)}
    bank = KeywordBank(embedder.model_id, embedder.dim)
    for name, emb in zip(clips, embedder(np.stack(list(clips.values())))):
        bank.add(Keyword(name, emb[None], threshold=0.985, samples=1))
    parts, truth, pos = [], [], 0
    for i, name in enumerate(["up", "down", "up", "down"]):
        gap = int(SR * (1.3 + 0.4 * i))
        parts += [np.zeros(gap, np.float32), clips[name]]
        pos += gap
        truth.append((name, (pos + SR // 4) / SR, (pos + 3 * SR // 4) / SR))
        pos += SR
    parts.append(np.zeros(SR, np.float32))
    audio = np.concatenate(parts)
    audio += 0.003 * rng.standard_normal(len(audio)).astype(np.float32)
    return audio, bank, truth


def test_incremental_logmel_equals_offline_frontend(embedder):
    import torch

    rng = np.random.default_rng(0)
    hop, window = 1600, embedder.window_samples
    audio = 0.1 * rng.standard_normal(hop * 15).astype(np.float32)
    padded = np.concatenate([np.zeros(window, np.float32), audio])
    path = IncrementalLogMel(embedder.model, hop)
    for k in range(1, 16):
        frames = path.push(audio[(k - 1) * hop : k * hop])
        with torch.inference_mode():
            offline = embedder.model.frontend(torch.from_numpy(padded[k * hop : k * hop + window])[None])
        assert frames.shape == offline.shape
        assert torch.allclose(frames, offline, atol=1e-5, rtol=0), f"hop {k}"


def test_incremental_path_needs_hop_on_frame_grid(embedder):
    with pytest.raises(KwsError, match="multiple of the model's frame hop"):
        IncrementalLogMel(embedder.model, 1000)


@pytest.mark.parametrize("plain", [False, True], ids=["incremental", "waveform"])
def test_detector_scores_equal_offline_windows(embedder, scene, plain):
    audio, bank, _ = scene
    audio = audio[: 4 * SR]
    emb = PlainEmbedder(embedder) if plain else embedder
    det = Detector(emb, bank, DetectorConfig(vad=False, threshold_offset=0.0))
    assert isinstance(det.path, WaveformWindow if plain else IncrementalLogMel)
    rng = np.random.default_rng(2)
    got, i = [], 0
    while i < len(audio):  # chunks of odd sizes, not aligned to hops
        n = int(rng.integers(1, 5000))
        got += list(det.hop_scores(audio[i : i + n]))
        i += n
    window, hop = embedder.window_samples, det.hop
    padded = np.concatenate([np.zeros(window, np.float32), audio])
    starts = range(hop, len(audio) + 1, hop)
    offline = bank.score(embedder(np.stack([padded[s : s + window] for s in starts])))
    assert [t for t, _ in got] == pytest.approx([s / SR for s in starts])
    np.testing.assert_allclose(np.stack([s for _, s in got]), offline, atol=1e-4)


def test_detector_finds_keywords_at_the_right_times(embedder, scene):
    audio, bank, truth = scene
    det = Detector(embedder, bank, DetectorConfig(smoothing=1, threshold_offset=0.0))
    events = []
    for i in range(0, len(audio), 1234):
        events += det.process(audio[i : i + 1234])
    assert [e.keyword for e in events] == [w for w, _, _ in truth]
    window, hop = embedder.window_samples / SR, det.hop / SR
    for ev, (_, start, end) in zip(events, truth):
        # The firing window must contain the keyword: it ends after the keyword starts
        # and no later than one window plus one hop after the keyword's end.
        assert start < ev.time <= end + window + hop
        assert ev.score >= ev.threshold
    assert det.stats.events == len(events)


def test_detect_stream_yields_and_calls_back(embedder, scene):
    audio, bank, truth = scene
    seen = []
    chunks = (audio[i : i + 1600] for i in range(0, len(audio), 1600))
    events = list(detect_stream(embedder, bank, chunks, DetectorConfig(smoothing=1, threshold_offset=0.0), callback=seen.append))
    assert events == seen and len(events) == len(truth)
    assert set(events[0].to_json()) >= {"keyword", "score", "threshold", "time"}
    json.dumps(events[0].to_json())


def test_trigger_fires_once_per_crossing_and_rests_after_an_event():
    times = [round(0.1 * k, 1) for k in range(1, 21)]
    steady = Trigger(["a"], np.array([0.5]), smoothing=1, refractory_s=0.3)
    # A score that stays above threshold (one long word) fires once.
    assert [e.time for t in times if (e := steady.step(t, np.array([0.9])))] == [0.1]
    # Dips below threshold re-arm the keyword; the refractory time still applies.
    pulses = [0.9 if k % 2 == 0 else 0.1 for k in range(20)]
    for refractory, expected in ((0.3, [0.1, 0.5, 0.9, 1.3, 1.7]), (1.0, [0.1, 1.1])):
        trig = Trigger(["a"], np.array([0.5]), smoothing=1, refractory_s=refractory)
        fired = [e.time for t, s in zip(times, pulses) if (e := trig.step(t, np.array([s])))]
        assert fired == pytest.approx(expected)


def test_trigger_rest_after_an_event_holds_for_every_keyword():
    trig = Trigger(["three", "tree"], np.array([0.5, 0.5]), smoothing=1, refractory_s=1.0)
    assert trig.step(0.1, np.array([0.6, 0.8])).keyword == "tree"
    # The same word, as the window slides, now looks more like "three": no second event.
    assert trig.step(0.2, np.array([0.9, 0.4])) is None
    assert trig.step(1.2, np.array([0.9, 0.4])).keyword == "three"


def test_trigger_smoothing_ignores_one_hop_spikes():
    seq = [0.2, 0.2, 0.9, 0.2, 0.2, 0.9, 0.9, 0.2]
    for smoothing, expected in ((1, [0.3, 0.6]), (2, [0.7])):
        trig = Trigger(["a"], np.array([0.7]), smoothing=smoothing, refractory_s=0.0)
        fired = [e.time for k, s in enumerate(seq) if (e := trig.step(round(0.1 * (k + 1), 1), np.array([s])))]
        assert fired == expected


def test_trigger_only_best_keyword_fires_and_gated_hops_never_fire():
    trig = Trigger(["a", "b"], np.array([0.5, 0.5]), smoothing=1, refractory_s=1.0)
    ev = trig.step(0.1, np.array([0.8, 0.95]))
    assert ev.keyword == "b" and ev.score == pytest.approx(0.95)
    assert trig.step(0.2, np.array([0.8, 0.95])) is None  # b rests, and b is still the best
    assert Trigger(["a"], np.array([-0.5]), 1, 1.0).step(0.1, None) is None


def test_trigger_confirmation_fires_the_keyword_heard_best_over_its_time():
    # "down on" rises first while "down off" is still being said; "down off" then rises further.
    hops = [(0.1, [0.2, 0.2]), (0.2, [0.62, 0.55]), (0.3, [0.6, 0.7]), (0.4, [0.5, 0.9]), (0.5, [0.3, 0.8]),
            (0.6, [0.2, 0.4])]  # fmt: skip
    at_once = Trigger(["down on", "down off"], np.array([0.5, 0.5]), smoothing=1, refractory_s=1.0)
    assert [(e.keyword, e.time) for t, s in hops if (e := at_once.step(t, np.array(s)))] == [("down on", 0.2)]
    confirm = Trigger(["down on", "down off"], np.array([0.5, 0.5]), smoothing=1, refractory_s=1.0, confirm_s=0.2)
    events = [e for t, s in hops if (e := confirm.step(t, np.array(s)))]
    # The decision opened at 0.2 closes at 0.4 with "down off" at its best so far.
    assert [(e.keyword, e.time, e.score) for e in events] == [("down off", 0.4, pytest.approx(0.9))]
    # After the rest, a new word opens a new decision.
    later = [(1.5, [0.7, 0.2]), (1.6, [0.8, 0.2]), (1.7, [0.6, 0.2])]
    assert [(e.keyword, e.time) for t, s in later if (e := confirm.step(t, np.array(s)))] == [("down on", 1.7)]


def test_detector_refuses_a_confirmation_time_out_of_range():
    for bad in (-1.0, 600.0):
        with pytest.raises(KwsError, match="confirmation time"):
            DetectorConfig(confirm_ms=bad).validate()


def test_energy_gate_skips_silent_windows(embedder, scene):
    audio, bank, truth = scene
    silence = np.zeros(3 * SR, np.float32)
    det = Detector(embedder, bank, DetectorConfig(vad=True, threshold_offset=0.0))
    assert det.process(silence) == [] and det.stats.hops == 30 and det.stats.embedded == 0
    det = Detector(embedder, bank, DetectorConfig(vad=False, threshold_offset=0.0))
    det.process(silence)
    assert det.stats.embedded == 30
    # Speech-level audio passes the gate: every keyword is still found.
    det = Detector(embedder, bank, DetectorConfig(smoothing=1, vad=True, vad_floor_dbfs=-40, threshold_offset=0.0))
    assert len(det.process(audio)) == len(truth) and 0 < det.stats.embedded < det.stats.hops


def test_detector_refuses_bad_input(embedder, scene):
    _, bank, _ = scene
    other = KeywordBank("kws-someothermodel", embedder.dim)
    other.add(Keyword("x", np.eye(1, embedder.dim, dtype=np.float32), 0.5, 1))
    with pytest.raises(BankError, match="not comparable"):
        Detector(embedder, other)
    with pytest.raises(BankError, match="no keywords"):
        Detector(embedder, KeywordBank(embedder.model_id, embedder.dim))
    det = Detector(embedder, bank)
    with pytest.raises(KwsError, match="mono"):
        det.process(np.zeros((100, 2), np.float32))
    with pytest.raises(KwsError, match="float"):
        det.process(np.zeros(100, np.int16))
    with pytest.raises(KwsError, match="whole number of samples"):
        Detector(embedder, bank, DetectorConfig(hop_ms=0.01))


def test_cli_detect_file_json(embedder, scene, random_checkpoint, tmp_path, capsys):
    from kws.audio import write_audio
    from kws.cli import main

    audio, bank, truth = scene
    wav, bank_path = tmp_path / "stream.wav", tmp_path / "bank.json"
    write_audio(wav, audio)
    bank.save(bank_path)
    code = main(["detect", str(wav), "--bank", str(bank_path), "--json", "--smoothing", "1", "--threshold-offset", "0",
                 "--model", str(random_checkpoint), "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["keyword"] for e in events] == [w for w, _, _ in truth]
    assert all(start < e["time"] <= end + 1.1 for e, (_, start, end) in zip(events, truth))
    assert "done" in err and f"{len(truth)} event(s)" in err


def test_cli_detect_says_when_the_input_is_shorter_than_a_hop(scene, random_checkpoint, tmp_path, capsys, monkeypatch):
    import io

    from kws.audio import write_audio
    from kws.cli import main

    _, bank, _ = scene
    bank_path, short = tmp_path / "bank.json", tmp_path / "short.wav"
    bank.save(bank_path)
    write_audio(short, np.full(800, 0.1, dtype=np.float32))  # 50 ms
    common = ["--bank", str(bank_path), "--model", str(random_checkpoint), "--threads", "1"]
    assert main(["detect", str(short), *common]) == 2
    assert "less than one hop (100 ms)" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x00\x01" * 500)))
    assert main(["detect", "-", *common]) == 2
    assert "less than one hop" in capsys.readouterr().err


def test_cli_detect_keeps_pending_clips_and_prints_the_summary_when_the_stream_fails(
    embedder, scene, random_checkpoint, tmp_path, capsys, monkeypatch
):
    import kws.cli.detect
    from kws.cli import main
    from kws.errors import DeviceError

    audio, bank, truth = scene
    bank_path, events_dir = tmp_path / "bank.json", tmp_path / "events"
    bank.save(bank_path)
    cut = round((truth[0][2] + 0.3) * SR)  # just after the first word: its clip still waits for post-roll

    def failing(args):  # type: ignore[no-untyped-def]
        def chunks():
            for i in range(0, cut, 1600):
                yield audio[i : min(i + 1600, cut)]
            raise DeviceError("audio device 'mic' stopped (unplugged or failed)")

        return chunks()

    monkeypatch.setattr(kws.cli.detect, "_source", failing)
    code = main(["detect", "--bank", str(bank_path), "--save-events", str(events_dir), "--smoothing", "1",
                 "--threshold-offset", "0", "--model", str(random_checkpoint), "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and out.count(" up ") == 1
    assert len(list(events_dir.glob("*.wav"))) == 1 and "1 event clip(s) saved" in err
    # The summary comes first, then the error.
    assert err.index("stopped by an error: ") < err.index("kws: error: audio device 'mic' stopped")


def test_cli_detect_checks_its_input_before_loading_the_model(scene, tmp_path, capsys, monkeypatch):
    import kws.cli.detect
    from kws.cli import main

    _, bank, _ = scene
    bank_path = tmp_path / "bank.json"
    bank.save(bank_path)

    def no_model(args):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(kws.cli.detect, "embedder_from_args", no_model)
    (tmp_path / "empty.wav").touch()
    for source, message in (("missing.wav", "no such file"), (".", "is a directory"), ("empty.wav", "empty")):
        assert main(["detect", str(tmp_path / source), "--bank", str(bank_path)]) == 2
        assert message in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "x.wav"), "--bank", str(tmp_path / "none.json")]) == 2
    assert "bank file not found" in capsys.readouterr().err
    for flags, message in ((["--rate", "0"], "sample rate 0 Hz"), (["--rate", "1"], "sample rate 1 Hz"),
                           (["--channels", "0"], "0 channels")):
        assert main(["detect", "-", "--bank", str(bank_path), *flags]) == 2
        assert message in capsys.readouterr().err


def test_cli_and_benchmark_defaults_are_the_detector_config() -> None:
    from kws.cli import build_parser
    from kws.cli._common import detector_config_from_args

    parser = build_parser()
    assert detector_config_from_args(parser.parse_args(["detect", "--bank", "b.json"])) == DetectorConfig()
    for bench in ("detect", "frontend"):
        assert parser.parse_args(["bench", bench]).hop_ms == DetectorConfig().hop_ms


def test_bench_soak_keeps_event_clips_under_the_cap_and_the_users_files(tmp_path):
    from kws.cli import main

    out, folder = tmp_path / "bench.json", tmp_path / "events"
    assert main(["bench", "detect", "--model", "scratch", "--backend", "onnx", "--threads", "1", "--minutes", "1",
                 "--save-events", str(folder), "--save-events-max-mb", "0.4", "--json", str(out)]) == 0  # fmt: skip
    ev = json.loads(out.read_text())["save_events"]
    assert ev["events"] >= 10  # the bench's bank fires at nearly every noise burst with this model
    assert 0 < ev["max_kws_mb"] <= 0.4 and ev["user_files_kept"] and ev["files_kws_did_not_write"] == []
    assert (folder / "meeting.wav").is_file() and (folder / "meeting.json").is_file()


def test_the_stream_offset_is_the_models_own_unless_given() -> None:
    from kws.cli import build_parser
    from kws.cli._common import detector_config_from_args
    from kws.embedder import StemEmbedder, TorchEmbedder

    parser = build_parser()
    own = detector_config_from_args(parser.parse_args(["detect", "--bank", "b.json"]), StemEmbedder)
    assert own.threshold_offset == StemEmbedder.stream_offset != TorchEmbedder.stream_offset
    given = parser.parse_args(["detect", "--bank", "b.json", "--threshold-offset", "0.3"])
    assert detector_config_from_args(given, StemEmbedder).threshold_offset == 0.3
