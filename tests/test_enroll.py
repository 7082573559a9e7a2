"""Enrolment: clip checks, centers, threshold calibration, impostor sets and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kws.audio import SAMPLE_RATE, write_audio
from kws.bank import KeywordBank
from kws.embedder import Embedder
from kws.enroll import (
    augment_clips,
    enroll,
    prepare_clips,
)
from kws.background import Background
from kws.impostors import embed_impostor_folder, load_impostors, running_speech, with_running_speech
from kws.errors import EnrollmentError
from kws.scoring import calibrate


class BandEmbedder(Embedder):
    """A transparent stand-in model: the normalised energy in 32 log-spaced frequency bands.

    Tones of one frequency embed alike; tones of distant frequencies are nearly orthogonal.
    """

    window_samples = SAMPLE_RATE
    dim = 32
    model_id = "fake-bands"

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.rfft(batch, axis=1)) ** 2
        edges = np.geomspace(60, 7900, self.dim + 1).astype(int)  # 1 Hz per bin at 1 s
        bands = np.stack([power[:, lo:hi].sum(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
        return bands / np.maximum(np.linalg.norm(bands, axis=1, keepdims=True), 1e-12)


def tone(freq: float, seconds: float = 0.5, amp: float = 0.3, pad: float = 0.2, seed: int = 0) -> np.ndarray:
    """A tone with a little noise, between ``pad`` seconds of near-silence on each side."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    body = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    silence = np.zeros(int(pad * SAMPLE_RATE))
    x = np.concatenate([silence, body, silence]) + 1e-5 * rng.standard_normal(len(t) + 2 * len(silence))
    return x.astype(np.float32)


def gaussian_impostors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def emb() -> BandEmbedder:
    return BandEmbedder()


def test_enroll_center_is_renormalised_mean(emb: BandEmbedder) -> None:
    clips = [tone(440 + 5 * i, seed=i) for i in range(3)]
    res = enroll(emb, "beep", clips, impostors=gaussian_impostors(500))
    prepared, _ = prepare_clips(clips, emb.window_samples, SAMPLE_RATE)
    e = emb(prepared)
    expected = e.mean(axis=0) / np.linalg.norm(e.mean(axis=0))
    np.testing.assert_allclose(res.keyword.centers[0], expected, atol=1e-5)
    assert res.keyword.samples == 3 and res.keyword.centers.shape == (1, 32)
    # Leave-one-out: each clip against the mean of the other two.
    for i in range(3):
        others = np.delete(e, i, axis=0).mean(axis=0)
        assert res.calibration.target_scores[i] == pytest.approx(e[i] @ others / np.linalg.norm(others), abs=1e-5)
    assert res.keyword.info["calibration"]["threshold"] == pytest.approx(res.threshold, abs=1e-5)


def test_threshold_meets_target_far_on_held_out_impostors(emb: BandEmbedder) -> None:
    """Calibrated on 20,000 Gaussian impostors, checked on 20,000 others.

    Tolerance: ±0.3 points at a 1% target (the binomial standard error of each
    set is 0.07 points, so this is over 3 standard errors of the difference).
    """
    clips = [tone(1000 + 3 * i, seed=i) for i in range(4)]
    # Impostors correlated with the keyword, so that the threshold lands in a crowded region.
    rng = np.random.default_rng(5)
    center = enroll(emb, "k", clips, impostors=gaussian_impostors(100)).keyword.centers[0]
    pool = gaussian_impostors(40000, seed=6) * 0.25 + center * rng.uniform(0, 1.2, (40000, 1))
    for target_far in (0.01, 0.05):
        res = enroll(emb, "k", clips, impostors=pool[:20000], target_far=target_far)
        assert res.calibration.limited_by == "far"
        held = pool[20000:] / np.linalg.norm(pool[20000:], axis=1, keepdims=True)
        far = np.mean(held @ res.keyword.centers[0] >= res.threshold)
        assert far == pytest.approx(target_far, abs=0.003 * target_far / 0.01)
        assert res.calibration.expected_far <= target_far


def test_threshold_capped_by_enrolment_clips(emb: BandEmbedder) -> None:
    clips = [tone(1000 + 3 * i, seed=i) for i in range(3)]
    # Impostors indistinguishable from the keyword: meeting 1% FAR would reject most clips.
    same_word = [tone(1000 + 3 * (i % 3), seed=100 + i) for i in range(200)]
    impostors = emb(prepare_clips(same_word, SAMPLE_RATE, SAMPLE_RATE)[0])
    # So poor a calibration (most impostors pass) is refused unless forced.
    with pytest.raises(EnrollmentError, match=r"cannot be told from other speech.*--force"):
        enroll(emb, "k", clips, impostors=impostors)
    res = enroll(emb, "k", clips, impostors=impostors, force=True)
    assert res.calibration.limited_by == "targets"
    assert res.threshold == pytest.approx(np.quantile(res.calibration.target_scores, 0.25))
    assert res.calibration.expected_far > 0.5
    assert any("lowered" in w for w in res.warnings)


def test_calibrate_rule_brute_force() -> None:
    impostor = np.linspace(0, 0.99, 100)
    cal = calibrate(np.array([0.97, 0.98, 0.99]), impostor, target_far=0.02)
    # 0.98 and 0.99 may pass (2%), 0.97 may not.
    assert 0.97 < cal.threshold <= 0.98
    assert cal.expected_far == pytest.approx(0.02)
    assert cal.limited_by == "far"


def test_silence_refused(emb: BandEmbedder) -> None:
    clips = [tone(440), np.full(SAMPLE_RATE, 1e-5, dtype=np.float32), tone(440, seed=2)]
    with pytest.raises(EnrollmentError, match="clip 2: is silent"):
        enroll(emb, "k", clips, impostors=gaussian_impostors(100))


def test_too_long_refused_with_lengths(emb: BandEmbedder) -> None:
    clips = [tone(440), tone(440, seconds=1.5, seed=1)]
    with pytest.raises(EnrollmentError, match=r"long\.wav: the speech lasts 1\.5\d s .* 1\.00 s window"):
        enroll(emb, "k", clips, impostors=gaussian_impostors(100), clip_names=["a.wav", "long.wav"])


def test_clip_with_long_silence_is_trimmed_and_centred() -> None:
    x = np.concatenate([tone(440, seconds=0.3, pad=0.0), np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)])
    prepared, warnings = prepare_clips([x], SAMPLE_RATE, SAMPLE_RATE)
    assert prepared.shape == (1, SAMPLE_RATE) and not warnings
    energy = prepared[0] ** 2
    centroid = np.sum(np.arange(SAMPLE_RATE) * energy) / energy.sum()
    assert centroid == pytest.approx(SAMPLE_RATE / 2, abs=0.02 * SAMPLE_RATE)


def test_clipping_warns(emb: BandEmbedder) -> None:
    loud = np.clip(tone(440, amp=3.0), -1, 1)
    res = enroll(emb, "k", [loud, tone(440, seed=1), tone(440, seed=2)], impostors=gaussian_impostors(100))
    assert any("clipped" in w and "clip 1" in w for w in res.warnings)


def test_outlier_refused_or_flagged(emb: BandEmbedder) -> None:
    good = [tone(440, seed=i) for i in range(3)]
    with pytest.raises(EnrollmentError, match=r"odd\.wav: similarity 0\.\d+ to the other clips"):
        enroll(emb, "k", good + [tone(3000)], impostors=gaussian_impostors(100), clip_names=["a", "b", "c", "odd.wav"])
    # A take that is only partly different (half its energy at another pitch) is kept with a warning.
    mixed = tone(440, seed=9) + tone(3000, amp=0.3, seed=10)
    res = enroll(emb, "k", good + [mixed], impostors=gaussian_impostors(100))
    flagged = [w for w in res.warnings if "different word" in w]
    assert len(flagged) == 1 and flagged[0].startswith("clip 4")


def test_several_centers_for_varied_samples(emb: BandEmbedder) -> None:
    clips = [tone(440, seed=1), tone(445, seed=2), tone(2500, seed=3), tone(2520, seed=4)]
    res = enroll(emb, "k", clips, impostors=gaussian_impostors(300), centers=2)
    assert res.keyword.centers.shape == (2, 32)
    prepared, _ = prepare_clips(clips, SAMPLE_RATE, SAMPLE_RATE)
    sims = emb(prepared) @ res.keyword.centers.T
    assert sims.max(axis=1).min() > 0.9  # every clip sits near one of the centers
    assert res.keyword.centers[0] @ res.keyword.centers[1] < 0.5


def test_similar_keyword_warns(emb: BandEmbedder) -> None:
    bank = KeywordBank(emb.model_id, emb.dim)
    first = enroll(emb, "alpha", [tone(700, seed=i) for i in range(3)], impostors=gaussian_impostors(200))
    bank.add(first.keyword)
    res = enroll(emb, "beta", [tone(705, seed=i + 5) for i in range(3)], impostors=gaussian_impostors(200), bank=bank)
    assert res.nearest is not None and res.nearest[0] == "alpha" and res.nearest[1] > 0.9
    assert any("very similar" in w and "'alpha'" in w for w in res.warnings)
    far = enroll(emb, "gamma", [tone(4000, seed=i) for i in range(3)], impostors=gaussian_impostors(200), bank=bank)
    assert far.nearest is not None and far.nearest[1] < 0.5
    assert not any("very similar" in w for w in far.warnings)


def test_bad_options_refused(emb: BandEmbedder) -> None:
    imp = gaussian_impostors(50)
    with pytest.raises(EnrollmentError, match="1 to 10 clips"):
        enroll(emb, "k", [tone(440)] * 11, impostors=imp)
    with pytest.raises(EnrollmentError, match="centers"):
        enroll(emb, "k", [tone(440)] * 2, impostors=imp, centers=3)
    with pytest.raises(EnrollmentError, match="impostor"):
        enroll(emb, "k", [tone(440)] * 2, impostors=np.zeros((5, 7), dtype=np.float32))


def test_augmentation_keeps_clips_close(emb: BandEmbedder) -> None:
    prepared, _ = prepare_clips([tone(440), tone(1500)], SAMPLE_RATE, SAMPLE_RATE)
    copies = augment_clips(prepared, copies=3, sample_rate=SAMPLE_RATE, seed=1)
    assert copies.shape == (2, 3, SAMPLE_RATE)
    assert not np.allclose(copies[0, 0], prepared[0])
    sims = emb(copies.reshape(6, -1)) @ emb(prepared).T
    assert np.all(np.argmax(sims, axis=1) == [0, 0, 0, 1, 1, 1])
    res = enroll(emb, "k", [tone(440, seed=i) for i in range(3)], impostors=gaussian_impostors(100), augment=True)
    assert res.keyword.info["augment"] is True


def test_bundled_impostors_model_check_and_word_exclusion(emb: BandEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "imp.npz"
    words = np.array(["yes", "no", "Yes", "up"])
    np.savez(path, model_id=np.array(emb.model_id), embeddings=gaussian_impostors(4), words=words)
    assert load_impostors(emb, path=path).shape == (4, 32)
    kept = load_impostors(emb, exclude="yes", path=path)
    np.testing.assert_array_equal(kept, gaussian_impostors(4)[[1, 3]])
    np.savez(path, model_id=np.array("other-model"), embeddings=gaussian_impostors(4), words=words)
    with pytest.raises(EnrollmentError, match="other-model.*--impostors DIR"):
        load_impostors(emb, path=path)
    with pytest.raises(EnrollmentError, match="--impostors DIR"):
        load_impostors(emb, path=tmp_path / "missing.npz")


def test_running_speech_impostors_are_spaced_embedded_windows_without_the_keyword(
    emb: BandEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows = gaussian_impostors(20, seed=1)
    windows[12] = np.nan  # a hop the energy gate skipped
    words = np.array(["yes no" if i in (4, 8) else "" for i in range(20)])
    Background(windows, words, hop_s=0.1, model_id=emb.model_id).save(tmp_path / "background_fake.npz")
    monkeypatch.setattr("kws.background.ASSETS", tmp_path)
    # One window per 0.4 s: hops 0, 4, 8, 12, 16; 4 and 8 hold the keyword, 12 was gated.
    np.testing.assert_allclose(running_speech(emb, exclude="yes"), windows[[0, 16]], atol=1e-3)
    assert len(running_speech(emb)) == 4

    class Other(BandEmbedder):
        model_id = "no-background"

    assert running_speech(Other()).shape == (0, 32)
    # An impostor set the user names is calibrated on as it is, without running speech.
    path = tmp_path / "imp.npz"
    np.savez(path, model_id=np.array(emb.model_id), embeddings=gaussian_impostors(3), words=np.array(["a", "b", "c"]))
    clips = [tone(600, seed=i) for i in range(3)]
    assert enroll(emb, "yes", clips, impostors=path, force=True).calibration.impostors == 3


def test_bundled_calibration_holds_the_model_s_running_speech(onnx_embedder) -> None:
    from kws.data.speech_commands import SpeechCommands
    from kws.demo import DEMO_DIR

    data = SpeechCommands(DEMO_DIR, subset="training", words=["open"])
    clips = [data.audio(i) for i in range(len(data))]
    words, running = load_impostors(onnx_embedder, exclude="open"), running_speech(onnx_embedder, exclude="open")
    assert len(running) > len(words)  # the bundled model has a bundled background
    assert enroll(onnx_embedder, "open", clips).calibration.impostors == len(words) + len(running)
    assert enroll(onnx_embedder, "open", clips, impostors=words).calibration.impostors == len(words)
    # A keyword with a window of its own: the running speech, at the model's window, is left out.
    assert len(with_running_speech(onnx_embedder, words, exclude="open", frames=30)) == len(words)


def test_impostor_folder_skips_keyword_and_noise(emb: BandEmbedder, tmp_path: Path) -> None:
    for word, freq in (("left", 1500), ("right", 3000), ("beep", 440)):
        for i in range(2):
            write_audio(tmp_path / word / f"s{i}_nohash_0.wav", tone(freq, seed=i))
    write_audio(tmp_path / "_background_noise_" / "noise.wav", tone(4000))
    got = embed_impostor_folder(emb, tmp_path, exclude="beep")
    assert got.shape == (4, 32)
    beep = emb(prepare_clips([tone(440)], SAMPLE_RATE, SAMPLE_RATE)[0])[0]
    assert (got @ beep).max() < 0.5  # the keyword's own clips were left out
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnrollmentError, match="no audio files"):
        embed_impostor_folder(emb, tmp_path / "empty")


def test_cli_enroll_and_bank_round_trip(random_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kws.cli import main

    clips = []
    for i in range(3):
        clips.append(tmp_path / f"kw{i}.wav")
        write_audio(clips[-1], tone(600, seed=i))
    for i in range(12):
        write_audio(tmp_path / "imp" / f"i{i}.wav", tone(300 + 250 * i, seed=20 + i))
    bank = tmp_path / "bank.json"
    model = ["--model", str(random_checkpoint)]
    # Tones, not words: the speech engines saying "hello" would only pull the center off them.
    args = ["enroll", "hello", *map(str, clips), "--bank", str(bank), "--impostors", str(tmp_path / "imp"), "--no-spoken", *model]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "expected false-accept" in out
    loaded = KeywordBank.load(bank)
    assert loaded.names == ["hello"] and loaded["hello"].samples == 3
    # Enrolling the same name again needs --replace; a second word reports its nearest keyword.
    assert main(args) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(args[:1] + ["bye"] + args[2:]) == 0
    assert "nearest other keyword 'hello'" in capsys.readouterr().out
    assert main(["bank", "list", "--bank", str(bank)]) == 0
    listing = capsys.readouterr().out
    assert "hello" in listing and "bye" in listing
    assert main(["enroll", "x", "--bank", str(bank), *model]) == 2
    assert "--record" in capsys.readouterr().err


def test_absent_microphone_is_a_device_error(random_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from kws.cli import main
    from kws.errors import DeviceError
    from kws.sources import record_clip

    with pytest.raises(DeviceError, match="no-such-mic|PortAudio"):
        record_clip(1.0, device="no-such-mic")
    args = ["enroll", "hi", "--record", "3", "--device", "no-such-mic", "--bank", str(tmp_path / "b.json")]
    assert main([*args, "--impostors", str(tmp_path), "--model", str(random_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "no input device matching 'no-such-mic'" in err or "PortAudio" in err
    assert not (tmp_path / "b.json").exists()


def test_too_little_speech_refused(emb: BandEmbedder) -> None:
    clips = [tone(440), tone(440, seconds=0.1, seed=1), tone(440, seed=2)]
    with pytest.raises(EnrollmentError, match=r"clip 2: only 0\.1\d s of speech \(at least 0\.15 s"):
        enroll(emb, "k", clips, impostors=gaussian_impostors(100))


def test_two_enrolments_into_one_bank_at_once_keep_both(
    random_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import kws.enroll
    from kws.cli import main

    for i in range(3):
        write_audio(tmp_path / f"kw{i}.wav", tone(600 + 400 * i, seed=i))
    for i in range(12):
        write_audio(tmp_path / "imp" / f"i{i}.wav", tone(300 + 250 * i, seed=20 + i))
    bank = tmp_path / "bank.json"
    # Both runs have read the bank before either writes it: the interleaving that lost a keyword.
    both_read = threading.Barrier(2, timeout=30)
    real_enroll = kws.enroll.enroll

    def slow_enroll(*args, **kwargs):  # type: ignore[no-untyped-def]
        both_read.wait()
        return real_enroll(*args, **kwargs)

    monkeypatch.setattr(kws.enroll, "enroll", slow_enroll)
    codes: list[int] = []

    def run(word: str, clip: int) -> None:
        codes.append(main(["enroll", word, str(tmp_path / f"kw{clip}.wav"), "--bank", str(bank),
                           "--impostors", str(tmp_path / "imp"), "--model", str(random_checkpoint)]))

    threads = [threading.Thread(target=run, args=(w, i)) for i, w in enumerate(["lights", "music"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [0, 0]
    assert sorted(KeywordBank.load(bank).names) == ["lights", "music"]


def test_cli_enroll_normalises_the_name_and_refuses_control_characters(
    random_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from kws.cli import main

    for i in range(2):
        write_audio(tmp_path / f"kw{i}.wav", tone(600, seed=i))
    for i in range(12):
        write_audio(tmp_path / "imp" / f"i{i}.wav", tone(300 + 250 * i, seed=20 + i))
    bank = tmp_path / "bank.json"
    common = ["--bank", str(bank), "--impostors", str(tmp_path / "imp"), "--model", str(random_checkpoint)]
    clips = [str(tmp_path / f"kw{i}.wav") for i in range(2)]
    assert main(["enroll", "lights ", *clips, *common]) == 0
    assert main(["enroll", " lights", *clips, *common]) == 2
    assert "already in" in capsys.readouterr().err
    assert main(["enroll", "lights\non", *clips, *common]) == 2
    assert "control or invisible characters" in capsys.readouterr().err
    assert KeywordBank.load(bank).names == ["lights"]
