"""The synthetic corpus: vocabularies, speakers, clips, splits, noise, resume, CLI."""

from __future__ import annotations

import importlib.machinery
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.audio import load_audio
from kws.data.synth import (
    PEAK_LEVEL,
    SynthConfig,
    english_voices,
    load_vocab,
    make_speakers,
    speak,
    synthesize,
    voice_variants,
)
from kws.errors import DataError

from conftest import TINY_WORDS


def test_bundled_vocabularies() -> None:
    sc = load_vocab("speech_commands")
    assert len(sc) == 35 and {"yes", "no", "marvin", "learn"} <= set(sc)
    train = load_vocab("train")
    assert len(train) == 3000 and len(set(train)) == 3000


def test_vocab_file_is_cleaned_and_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# my words\nHello\n\n  don't \nwell-known\n")
    assert load_vocab(str(good)) == ["hello", "don't", "well-known"]
    for name, text in {"digits": "yes\nno2\n", "space": "hey there\n", "dup": "yes\nYES\n", "empty": "#\n"}.items():
        bad = tmp_path / f"{name}.txt"
        bad.write_text(text)
        with pytest.raises(DataError, match=str(bad)):
            load_vocab(str(bad))
    with pytest.raises(DataError, match="no such vocabulary"):
        load_vocab(str(tmp_path / "missing.txt"))


def test_speakers_are_deterministic_distinct_and_varied() -> None:
    a, b = make_speakers(150, seed=3), make_speakers(150, seed=3)
    assert a == b and [s.id for s in a] == [s.id for s in b]
    assert [s.id for s in make_speakers(150, seed=4)] != [s.id for s in a]
    ids = [s.id for s in a]
    assert len(set(ids)) == 150
    assert all(len(i) == 8 and "_" not in i and int(i, 16) >= 0 for i in ids)
    assert all(s.voice.startswith("gmw/") for s in a)
    assert len({(s.voice, s.variant) for s in a}) == 150  # timbres do not repeat while pairs last
    assert len(english_voices()) >= 5 and len(voice_variants()) >= 50
    assert len({s.speed for s in a}) > 20 and len({s.pitch for s in a}) > 20


def test_accented_speakers_use_non_english_voices_and_leave_the_english_ones_alone() -> None:
    from kws.data.synth import ACCENT_VOICES

    plain, mixed = make_speakers(20, seed=3), make_speakers(20, seed=3, accents=0.25)
    assert sum(s.voice in ACCENT_VOICES for s in mixed) == 5
    assert mixed[:15] == plain[:15]  # the English speakers are drawn as before
    assert len({s.id for s in mixed}) == 20
    x = speak("yes", next(s for s in mixed if s.voice in ACCENT_VOICES))
    assert x.shape == (16000,) and np.abs(x).max() > 0.1
    with pytest.raises(DataError, match="fraction"):
        make_speakers(4, seed=0, accents=1.5)
    assert "accents" not in SynthConfig(words=("yes",)).identity()  # old corpora keep resuming
    assert SynthConfig(words=("yes",), accents=0.2).identity()["accents"] == 0.2


def test_long_word_is_sped_up_to_fit() -> None:
    slow = make_speakers(1, seed=0)[0]
    slow = type(slow)(voice=slow.voice, variant=slow.variant, speed=80, pitch=50, amplitude=100)
    x = speak("internationalization", slow)
    assert x.shape == (16000,) and x.dtype == np.float32
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    assert loud[0] > 0 and loud[-1] < 15999  # fits, with silence at both ends
    assert np.isclose(np.abs(x).max(), PEAK_LEVEL, atol=1e-6)


def test_tiny_corpus_layout_and_clips(tiny_corpus: Path) -> None:
    speakers = json.loads((tiny_corpus / "speakers.json").read_text())
    assert len(speakers) == 12
    for word in TINY_WORDS:
        files = sorted((tiny_corpus / word).glob("*.wav"))
        assert [f.name.split("_nohash_")[0] for f in files] == sorted(speakers)
    clip = tiny_corpus / "cat" / files[0].name
    info = sf.info(str(clip))
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (16000, 16000, 1, "PCM_16")
    x = load_audio(clip)
    assert np.isclose(np.abs(x).max(), PEAK_LEVEL, atol=1e-3)
    energy = x**2
    centroid = (energy * np.arange(len(x))).sum() / energy.sum()
    assert 4000 < centroid < 12000  # the word sits in the middle of its second
    # Different speakers of one word really sound different.
    other = load_audio(tiny_corpus / "cat" / files[1].name)
    assert not np.allclose(x, other, atol=1e-2)


def test_tiny_corpus_splits_by_speaker(tiny_corpus: Path) -> None:
    speakers = json.loads((tiny_corpus / "speakers.json").read_text())
    lists = {}
    for name in ("validation", "testing"):
        lines = (tiny_corpus / f"{name}_list.txt").read_text().split()
        assert all((tiny_corpus / rel).is_file() for rel in lines)
        lists[name] = {rel.split("/")[1].split("_nohash_")[0] for rel in lines}
        assert lists[name] == {sid for sid, s in speakers.items() if s["split"] == name}
        assert len(lines) == len(lists[name]) * len(TINY_WORDS)  # every clip of those speakers
    assert lists["validation"] and lists["testing"] and not lists["validation"] & lists["testing"]
    assert sum(s["split"] == "training" for s in speakers.values()) == 8


def test_tiny_corpus_background_noise(tiny_corpus: Path) -> None:
    folder = tiny_corpus / "_background_noise_"
    names = sorted(p.name for p in folder.glob("*.wav"))
    assert names == ["babble.wav", "brown_noise.wav", "pink_noise.wav", "white_noise.wav"]
    spectra = {}
    for name in names:
        x = load_audio(folder / name)
        assert x.shape == (5 * 16000,) and np.abs(x).max() > 0.1
        spectra[name] = np.abs(np.fft.rfft(x)) ** 2
    low_share = {n: s[: len(s) // 16].sum() / s.sum() for n, s in spectra.items()}  # power below 500 Hz
    assert low_share["white_noise.wav"] < low_share["pink_noise.wav"] < low_share["brown_noise.wav"]


@pytest.mark.slow
def test_resume_is_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    cfg = SynthConfig(words=("go", "stop"), speakers=4, seed=1, noise_seconds=1.0, workers=1)
    first = synthesize(cfg, tmp_path / "a", progress=False)
    assert (first["written"], first["skipped"], first["failed"]) == (8, 0, 0)
    clips = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").glob("[a-z]*/*.wav"))
    victim = tmp_path / "a" / clips[3]
    before = victim.read_bytes()
    victim.unlink()
    again = synthesize(cfg, tmp_path / "a", progress=False)
    assert (again["written"], again["skipped"]) == (1, 7)
    assert victim.read_bytes() == before

    parallel = SynthConfig(words=("go", "stop"), speakers=4, seed=1, noise_seconds=1.0, workers=2)
    synthesize(parallel, tmp_path / "b", progress=False)
    for rel in clips + [Path("validation_list.txt"), Path("_background_noise_/babble.wav")]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_refuses_to_mix_corpora(tmp_path: Path) -> None:
    cfg = SynthConfig(words=("go",), speakers=3, noise_seconds=0.5, workers=1)
    synthesize(cfg, tmp_path / "c", progress=False)
    with pytest.raises(DataError, match="different settings.*speakers"):
        synthesize(SynthConfig(words=("go",), speakers=4, noise_seconds=0.5, workers=1), tmp_path / "c")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        synthesize(cfg, tmp_path / "other")
    with pytest.raises(DataError, match="bad word"):
        synthesize(SynthConfig(words=("go now",), speakers=3), tmp_path / "d")


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kws.cli import main

    out = tmp_path / "corpus"
    code = main(["-q", "synth", "--words", "yes,No", "--speakers", "3", "--out", str(out), "--workers", "1",
                 "--noise-seconds", "0.5"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == 6 and report["speakers"] == {"training": 2, "validation": 1, "testing": 0}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["_background_noise_", "no", "yes"]
    vocab = tmp_path / "v.txt"
    vocab.write_text("alpha\nbeta\ngamma\n")
    assert main(["-q", "synth", "--vocab", str(vocab), "--max-words", "1", "--speakers", "3",
                 "--out", str(tmp_path / "v"), "--workers", "1", "--noise-seconds", "0.5"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "v").iterdir() if p.is_dir()) == ["_background_noise_", "alpha"]
    assert main(["synth", "--words", "two words", "--out", str(tmp_path / "x")]) == 2
    assert "bad word" in capsys.readouterr().err


# ---------------------------------------------------------------------------- other speech engines

FAKE_ENGINE = r'''#!/usr/bin/env python3
"""A stand-in speech engine: logs how it was called and writes a tone whose length
follows the speech rate and whose frequency follows the pitch."""
import json, math, os, re, struct, sys, wave

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
stdin = "" if name == "mbrola" or sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["KWS_FAKE_LOG"], "a") as log:
    log.write(json.dumps({"engine": name, "args": args, "stdin": stdin}) + "\n")
if name == "pico2wave":
    out, text = args[args.index("-w") + 1], args[-1]
    rate, pitch = (int(re.search(k + r' level="(\d+)"', text).group(1)) for k in ("speed", "pitch"))
    word = re.sub("<[^>]*>", "", text)
else:
    out, word = args[args.index("-o") + 1], stdin.strip()
    rate, pitch = int(args[args.index("-r") + 1]), int(args[args.index("-t") + 1])
seconds = float(os.environ.get("KWS_FAKE_SECONDS", "0.5")) * 100 / rate * (1 + len(word) / 10)
n = int(22050 * seconds)
with wave.open(out, "wb") as w:
    w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
    w.writeframes(b"".join(struct.pack("<h", int(9000 * math.sin(2 * math.pi * 2 * pitch * i / 22050)))
                           for i in range(n)))
'''


@pytest.fixture
def fake_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake ``pico2wave``, ``RHVoice-test`` and ``mbrola`` first on PATH, with RHVoice voices
    bdl, clb and slt and MBROLA voices us1 and en1 installed; returns the call log."""
    import kws.data.synth as synth

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("pico2wave", "RHVoice-test", "mbrola"):
        (bin_dir / name).write_text(FAKE_ENGINE)
        (bin_dir / name).chmod(0o755)
    for folder in ("rhvoice/bdl", "rhvoice/clb", "rhvoice/slt", "mbrola/us1", "mbrola/en1"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.setattr(synth, "RHVOICE_VOICES_DIR", tmp_path / "rhvoice")
    monkeypatch.setattr(synth, "MBROLA_DIR", tmp_path / "mbrola")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "calls.jsonl"
    log.touch()
    monkeypatch.setenv("KWS_FAKE_LOG", str(log))
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_engines_are_detected_with_only_the_voices_kws_may_use(fake_engines: Path) -> None:
    from kws.data.synth import installed_engines, resolve_engines

    found = installed_engines()
    assert found["pico"] == ["en-US", "en-GB"]
    assert found["rhvoice"] == ["bdl", "clb"]  # slt is installed but kept for evaluation
    assert found["mbrola"] == ["mb-us1", "mb-en1"]  # only the installed MBROLA voices
    assert "espeak-ng" in found
    every = resolve_engines("all")
    assert {"espeak-ng", "pico", "rhvoice"} <= set(every) and "mbrola" not in every  # MBROLA only when named
    assert resolve_engines("pico, mbrola") == ("pico", "mbrola")


def test_missing_or_unknown_engines_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kws.data.synth import check_engines

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed
    with pytest.raises(DataError, match=r"pico is not installed here \(apt-get install libttspico-utils"):
        check_engines(("pico",))
    with pytest.raises(DataError, match="espeak-ng is not installed"):
        synthesize(SynthConfig(words=("go",), speakers=3), tmp_path / "x")
    with pytest.raises(DataError, match="unknown speech engine festival: choose from espeak-ng, pico"):
        check_engines(("espeak-ng", "festival"))
    with pytest.raises(DataError, match="name each once"):
        check_engines(("pico", "pico"))


def test_engine_command_lines_carry_voice_and_prosody() -> None:
    from kws.data.synth import SpeakerSpec, engine_command

    mb = SpeakerSpec(voice="mb-us2", variant="", speed=140, pitch=30, amplitude=90, engine="mbrola")
    cmd, stdin = engine_command("go", mb, 140, "unused.wav")
    assert cmd[:3] == ["espeak-ng", "-v", "mb-us2"] and "+" not in cmd[2] and stdin is None  # no espeak variant
    assert cmd[cmd.index("-s") + 1] == "140" and cmd[cmd.index("-p") + 1] == "30" and cmd[-1] == "go"
    es = SpeakerSpec(voice="gmw/en", variant="Alex", speed=150, pitch=60, amplitude=100)
    assert engine_command("go", es, 150, "unused.wav")[0][2] == "gmw/en+Alex"
    pico = SpeakerSpec(voice="en-GB", variant="", speed=175, pitch=50, amplitude=100, engine="pico")
    assert engine_command("go", pico, 350, "o.wav")[0][-1] == '<speed level="200"><pitch level="100">go</pitch></speed>'
    rh = SpeakerSpec(voice="clb", variant="", speed=175, pitch=85, amplitude=100, engine="rhvoice")
    cmd, stdin = engine_command("go", rh, 175, "o.wav")
    assert cmd[cmd.index("-p") + 1] == "clb" and cmd[cmd.index("-r") + 1] == "100" and stdin == b"go"
    assert int(cmd[cmd.index("-t") + 1]) > 100  # a high espeak-ng pitch is a high RHVoice pitch
    assert mb.id != SpeakerSpec(voice="mb-us2", variant="", speed=140, pitch=30, amplitude=90).id  # engine in the id


def test_corpus_from_several_engines(fake_engines: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(words=("yes", "go"), speakers=7, seed=2, noise_seconds=0.5, workers=1,
                      engines=("espeak-ng", "pico", "rhvoice"))  # fmt: skip
    report = synthesize(cfg, tmp_path / "c", progress=False)
    assert (report["written"], report["failed"]) == (14, 0), report["failures"]
    speakers = json.loads((tmp_path / "c" / "speakers.json").read_text())
    engines = [s["engine"] for s in speakers.values()]
    assert [engines.count(e) for e in ("espeak-ng", "pico", "rhvoice")] == [3, 2, 2]  # first engine gets the rest
    assert json.loads((tmp_path / "c" / "synth.json").read_text())["engines"] == ["espeak-ng", "pico", "rhvoice"]
    log = calls(fake_engines)
    assert {c["engine"] for c in log} == {"pico2wave", "RHVoice-test"} and len(log) == 8
    assert not any("slt" in c["args"] for c in log)
    assert {c["stdin"] for c in log if c["engine"] == "RHVoice-test"} == {"yes", "go"}
    pico_rates = {c["args"][-1].split('"')[1] for c in log if c["engine"] == "pico2wave"}
    assert len(pico_rates) == 2  # each speaker its own speed
    for sid, s in speakers.items():
        x = load_audio(tmp_path / "c" / "go" / f"{sid}_nohash_0.wav")
        assert np.isclose(np.abs(x).max(), PEAK_LEVEL, atol=1e-3)
    readme = (tmp_path / "c" / "README.md").read_text()
    assert "Apache-2.0" in readme and "LGPL-2.1" in readme and "GPL-3.0" in readme and "mbrola" not in readme
    assert "Not for commercial use" not in readme


def test_other_engines_speak_faster_when_a_word_is_too_long(fake_engines: Path, monkeypatch) -> None:
    from kws.data.synth import SpeakerSpec

    monkeypatch.setenv("KWS_FAKE_SECONDS", "1.2")
    x = speak("go", SpeakerSpec(voice="bdl", variant="", speed=175, pitch=50, amplitude=100, engine="rhvoice"))
    rates = [int(c["args"][c["args"].index("-r") + 1]) for c in calls(fake_engines)]
    assert x.shape == (16000,) and len(rates) >= 2 and rates == sorted(rates) and rates[0] == 100


def test_mbrola_corpus_readme_warns_against_sale() -> None:
    from kws.data.synth import SpeakerSpec, corpus_readme

    readme = corpus_readme([SpeakerSpec(voice="mb-en1", variant="", speed=150, pitch=50, amplitude=100,
                                        engine="mbrola")])  # fmt: skip
    assert "| mbrola | 1 | mb-en1 |" in readme and "Not for commercial use" in readme


def test_cli_help_lists_the_engines_found(fake_engines: Path, monkeypatch, capsys) -> None:
    import kws.data.synth as synth
    from kws.cli import main

    monkeypatch.setattr(synth, "PIPER_VOICE_PACKAGES", {})  # Piper without a voice counts as missing
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert "pico: en-US, en-GB" in out and "rhvoice: bdl, clb" in out and "mbrola: mb-us1, mb-en1" in out
    assert "piper: NOT INSTALLED" in out and "non-commercial" in out


def test_every_installed_engine_speaks() -> None:
    """The real engines installed here (espeak-ng always; the others after `make synth-engines`)."""
    from kws.data.synth import installed_engines

    found = installed_engines()
    assert "espeak-ng" in found
    clips = {}
    for engine, voices in found.items():
        speakers = make_speakers(len(found) * max(len(voices), 1), seed=0, engines=(engine,))
        for s in speakers[:2]:
            x = speak("seven", s)
            assert x.shape == (16000,) and np.isclose(np.abs(x).max(), PEAK_LEVEL, atol=1e-6), (engine, s)
            clips[(engine, s.id)] = x
    keys = list(clips)
    assert all(not np.allclose(clips[a], clips[b], atol=1e-2) for a, b in zip(keys, keys[1:]))


def test_piper_voices_come_from_packages_and_follow_speed_and_pitch(tmp_path: Path, monkeypatch) -> None:
    """Piper runs in-process: a stand-in ``piper`` module and voice package check the glue
    (detection, loading once per process, prosody); the real one runs in the test above
    where it is installed."""
    import sys
    import types

    import kws.data.synth as synth
    from kws.data.synth import SpeakerSpec, installed_engines

    voice_pkg = tmp_path / "fake_piper_voice"
    (voice_pkg / "data").mkdir(parents=True)
    (voice_pkg / "__init__.py").write_text("")
    (voice_pkg / "data" / "xx-fake.onnx").write_bytes(b"model")
    loaded, configs = [], []

    class Voice:
        config = types.SimpleNamespace(sample_rate=22050)

        @staticmethod
        def load(model, config_path):
            loaded.append((Path(model).name, Path(config_path).name))
            return Voice()

        def synthesize(self, word, syn_config):
            configs.append(syn_config)
            n = int(22050 * 0.3 * syn_config.length_scale)
            wave = np.sin(np.arange(n) * syn_config.noise_scale, dtype=np.float32)
            yield types.SimpleNamespace(audio_float_array=wave)

    fake = types.ModuleType("piper")
    fake.__spec__ = importlib.machinery.ModuleSpec("piper", None)
    fake.PiperVoice, fake.SynthesisConfig = Voice, lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "piper", fake)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(synth, "PIPER_VOICE_PACKAGES", {"xx-fake": "fake_piper_voice"})
    monkeypatch.setattr(synth, "_PIPER_VOICES", {})
    assert installed_engines()["piper"] == ["xx-fake"]
    slow = SpeakerSpec(voice="xx-fake", variant="", speed=120, pitch=15, amplitude=100, engine="piper")
    fast = SpeakerSpec(voice="xx-fake", variant="", speed=220, pitch=85, amplitude=100, engine="piper")
    a, b = speak("go", slow), speak("go", fast)
    assert a.shape == b.shape == (16000,) and np.isclose(np.abs(a).max(), PEAK_LEVEL, atol=1e-6)
    assert loaded == [("xx-fake.onnx", "xx-fake.onnx.json")]  # loaded once for both speakers
    assert configs[0].length_scale > 1 > configs[1].length_scale  # slower speaker: longer
    assert configs[0].noise_scale < configs[1].noise_scale
    assert (np.abs(a) > 1e-3).sum() > (np.abs(b) > 1e-3).sum()
