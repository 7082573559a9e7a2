"""A keyword as speech engines say it (kws.spoken): the vector, enrolment, the bank, feedback and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws.bank import KeywordBank
from kws.errors import BankError, EnrollmentError
from kws.impostors import load_impostors
from kws.metrics import few_shot_accuracy, normalize, open_set_trials, with_spoken
from kws.spoken import SpokenConfig, spoken_centers, spoken_sources, spoken_vector

FEW = SpokenConfig(voices=3)


def test_with_spoken_adds_the_vector_and_renormalises() -> None:
    c = normalize(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32))
    v = np.array([0.0, 0.0, 1.0], np.float32)
    np.testing.assert_allclose(with_spoken(c, v), normalize(c + v), atol=1e-6)
    assert with_spoken(c, None) is c


def test_spoken_vector_lifts_few_shot_accuracy_toward_the_right_word() -> None:
    """Two words whose clips overlap: a spoken vector pointing at each word's own side separates them."""
    rng = np.random.default_rng(0)
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    shared = np.eye(4, dtype=np.float32)[2]
    clips = [normalize(shared + 0.35 * w + 0.6 * rng.standard_normal((40, 4)).astype(np.float32)) for w in (a, b)]
    emb, labels = np.concatenate(clips), np.repeat([0, 1], 40)
    plain = few_shot_accuracy(emb, labels, 2, 1, 200, 5, seed=0).mean
    helped = few_shot_accuracy(emb, labels, 2, 1, 200, 5, seed=0, spoken=[0.8 * a, 0.8 * b]).mean
    wrong = few_shot_accuracy(emb, labels, 2, 1, 200, 5, seed=0, spoken=[0.8 * b, 0.8 * a]).mean
    assert wrong < plain < helped
    # Without spoken vectors the open-set trials are exactly those of before (same draws).
    first = next(open_set_trials(emb, labels, 3, 1, 0))
    again = next(open_set_trials(emb, labels, 3, 1, 0, None))
    np.testing.assert_array_equal(first[0], again[0])


def test_engines_say_the_word(onnx_embedder) -> None:
    sources = spoken_sources()
    assert "espeak-ng" in sources and "mbrola" not in sum(sources.values(), ())
    yes, names = spoken_centers(onnx_embedder, "yes", FEW)
    stop, _ = spoken_centers(onnx_embedder, "stop", FEW)
    assert names == list(sources) and yes.shape == (len(sources), onnx_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(yes, axis=1), 1.0, atol=1e-5)
    # Each source hears the same word alike and another word otherwise.
    assert (np.sum(yes * stop, axis=1) < 0.5).all()
    if len(names) > 1:
        assert float(yes[0] @ yes[1]) > 0.5
    others = load_impostors(onnx_embedder, exclude="yes")
    common = normalize(others).mean(axis=0)
    vector, _ = spoken_vector(onnx_embedder, "yes", others, FEW)
    np.testing.assert_allclose(vector, FEW.weight * (yes - common).sum(axis=0), atol=1e-5)
    # What every word's voices share is taken out: the vector leans less toward other words than the centers do.
    assert float(normalize(vector) @ common) < float(normalize(yes.sum(axis=0)) @ common)


def test_other_words_of_the_wrong_shape_are_refused(onnx_embedder) -> None:
    for others in (np.zeros((0, onnx_embedder.dim)), np.zeros((5, onnx_embedder.dim + 1)), np.zeros(onnx_embedder.dim)):
        with pytest.raises(EnrollmentError, match="other words"):
            spoken_vector(onnx_embedder, "yes", others, FEW)


@pytest.mark.parametrize("text", ["", "123", "hey!", "é", "two  spaces"])
def test_text_the_engines_cannot_read_is_refused(onnx_embedder, text: str) -> None:
    with pytest.raises(EnrollmentError, match="cannot be spoken"):
        spoken_centers(onnx_embedder, text, FEW)


def test_bad_spoken_settings_refused(onnx_embedder) -> None:
    for cfg in (SpokenConfig(voices=0), SpokenConfig(weight=0.0)):
        with pytest.raises(EnrollmentError):
            spoken_centers(onnx_embedder, "yes", cfg)


def _open_clips():
    from kws.data.speech_commands import SpeechCommands
    from kws.demo import DEMO_DIR

    data = SpeechCommands(DEMO_DIR, subset="all", words=["open"])
    return [data.audio(i) for i in range(len(data))]


def test_enrol_with_spoken_voices_and_feedback_keeps_them(onnx_embedder, tmp_path: Path) -> None:
    from kws.enroll import enroll
    from kws.feedback import add_positive

    clips = _open_clips()
    plain = enroll(onnx_embedder, "open", clips[:3]).keyword
    res = enroll(onnx_embedder, "open", clips[:3], spoken=FEW, say="open")
    kw = res.keyword
    vector, sources = spoken_vector(onnx_embedder, "open", load_impostors(onnx_embedder, exclude="open"), FEW)
    np.testing.assert_allclose(kw.spoken, vector, atol=1e-5)
    np.testing.assert_allclose(kw.centers, with_spoken(plain.centers, vector), atol=1e-5)
    assert kw.info["spoken"] == {"text": "open", "sources": sources, "voices": 3, "weight": FEW.weight}
    # The center moved toward the voices, and its own clips still pass (leave-one-out, spoken vector kept).
    said = normalize(vector)
    assert float(kw.centers[0] @ said) > float(plain.centers[0] @ said)
    assert (res.calibration.target_scores >= kw.threshold).all()

    bank = KeywordBank(onnx_embedder.model_id, onnx_embedder.dim)
    bank.add(kw)
    path = tmp_path / "bank.json"
    bank.save(path)
    loaded = KeywordBank.load(path, model_id=onnx_embedder.model_id)
    np.testing.assert_allclose(loaded["open"].spoken, kw.spoken, atol=1e-6)
    # A positive re-makes the center from all positives, the spoken vector still in it.
    add_positive(onnx_embedder, loaded, "open", clips[3], impostors=load_impostors(onnx_embedder))
    positives = loaded["open"].all_positives
    np.testing.assert_allclose(loaded["open"].centers[0], with_spoken(normalize(positives.mean(0))[None], vector)[0], atol=1e-5)

    data = json.loads(path.read_text())
    data["keywords"]["open"]["spoken"] = [0.1, 0.2]
    path.write_text(json.dumps(data))
    with pytest.raises(BankError, match="spoken has shape"):
        KeywordBank.load(path)


def test_cli_enrols_with_the_voices_by_default_and_from_the_clips_alone_when_they_cannot_say_it(
    random_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from kws.audio import write_audio
    from kws.cli import main
    from tests.test_enroll import tone

    clips = []
    for i in range(3):
        clips.append(str(tmp_path / f"kw{i}.wav"))
        write_audio(clips[-1], tone(600, seed=i))
    for i in range(12):
        write_audio(tmp_path / "imp" / f"i{i}.wav", tone(300 + 250 * i, seed=20 + i))
    bank = tmp_path / "b.json"
    args = [*clips, "--bank", str(bank), "--model", str(random_checkpoint), "--impostors", str(tmp_path / "imp"),
            "--no-confusables", "--force"]  # fmt: skip
    assert main(["enroll", "beep", *args]) == 0
    assert "spoken               'beep' by 16 voices of espeak-ng" in capsys.readouterr().out
    assert KeywordBank.load(bank)["beep"].spoken is not None
    # Digits are not words the engines read: by default the clips alone, said so; asked for, refused.
    assert main(["enroll", "beep2", *args]) == 0
    assert "warning: enrolled from the clips alone: 'beep2' cannot be spoken" in capsys.readouterr().out
    assert KeywordBank.load(bank)["beep2"].spoken is None
    assert main(["enroll", "beep3", *args, "--spoken"]) == 2
    assert "'beep3' cannot be spoken" in capsys.readouterr().err
    assert main(["enroll", "beep4", *args, "--no-spoken"]) == 0
    assert KeywordBank.load(bank)["beep4"].spoken is None
    assert main(["enroll", "beep5", *args, "--no-spoken", "--say", "beep"]) == 2
    assert "does not go with --no-spoken" in capsys.readouterr().err


def test_cli_eval_spoken_adds_each_words_voices(tiny_corpus: Path, tmp_path: Path, capsys) -> None:
    """On the tiny synthetic corpus (other espeak-ng voices than the spoken ones), one clip plus the voices
    beats one clip alone."""
    from kws.cli import main

    args = ["eval", str(tiny_corpus), "--subset", "all", "--shots", "1", "--ways", "6", "--episodes", "100",
            "--open-set-episodes", "3", "--model", "speech-embedding"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "spoken"), "--spoken", "2"]) == 0
    assert "with the word spoken by 2 voices of: espeak-ng" in capsys.readouterr().out
    plain, spoken = (json.loads((tmp_path / k / "report.json").read_text()) for k in ("plain", "spoken"))
    assert set(spoken["spoken"]) == set(spoken["words"]) and "spoken" not in plain
    assert all(sources[0] == "espeak-ng" for sources in spoken["spoken"].values())
    assert spoken["few_shot"][0]["mean"] > plain["few_shot"][0]["mean"]


def test_cli_eval_spoken_with_a_model_of_no_bundled_impostors(
    random_checkpoint: Path, tiny_corpus: Path, tmp_path: Path, capsys
) -> None:
    from kws.cli import main

    args = ["eval", str(tiny_corpus), "--subset", "all", "--shots", "1", "--ways", "2", "--episodes", "5",
            "--open-set-episodes", "2", "--words", "cat", "bat", "--model", str(random_checkpoint),
            "--out", str(tmp_path / "r"), "--spoken", "1"]  # fmt: skip
    assert main(args) != 0 and "impostor set" in capsys.readouterr().err
    assert main([*args, "--impostors", str(tiny_corpus)]) == 0
    assert set(json.loads((tmp_path / "r" / "report.json").read_text())["spoken"]) == {"cat", "bat"}
    assert main([*args[:-2], "--impostors", str(tiny_corpus)]) != 0
    assert "--impostors goes with --spoken" in capsys.readouterr().err


def test_a_phrase_longer_than_the_window_is_spoken_at_its_own_window(onnx_embedder) -> None:
    from kws.data.speech_commands import SpeechCommands
    from kws.demo import DEMO_DIR
    from kws.enroll import enroll

    data = SpeechCommands(DEMO_DIR, subset="all", words=["open", "speaker"])
    takes = {w: [data.audio(i) for i in np.flatnonzero(data.labels == data.classes.index(w))[:3]] for w in data.classes}
    gap = np.zeros(2400, np.float32)
    clips = [np.concatenate([a, gap, b]) for a, b in zip(takes["open"], takes["speaker"])]
    kw = enroll(onnx_embedder, "open speaker", clips, spoken=FEW).keyword
    assert kw.frames is not None and kw.frames > onnx_embedder.frames  # a window of its own
    at = onnx_embedder.at_frames(kw.frames)
    vector, _ = spoken_vector(at, "open speaker", load_impostors(at, exclude="open speaker"), FEW)
    np.testing.assert_allclose(kw.spoken, vector, atol=1e-5)
