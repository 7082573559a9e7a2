"""Event clips (kws.events), false-alarm feedback, re-enrolment and undo (kws.feedback, bank versions 2 and 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kws.audio import load_audio, write_audio
from kws.bank import BANK_VERSION, Entry, Keyword, KeywordBank
from kws.cli import main
from kws.detect import Detector, DetectorConfig
from kws.errors import AudioError, BankError, EnrollmentError
from kws.events import Event, EventClipConfig, EventRecorder, read_sidecar
from kws.feedback import FeedbackConfig, add_negative, add_positive, undo

SR = 16000


@pytest.fixture(scope="module")
def embedder(random_checkpoint):
    from kws.embedder import load_embedder

    return load_embedder(random_checkpoint, threads=1)


def _word(f0: float, f1: float, shift: int = 0, seed: int | None = None) -> np.ndarray:
    """A 0.5 s chirp with harmonics in a 1 s clip (a 'word'), varied by ``shift`` and noise of ``seed``."""
    t = np.arange(SR // 2) / SR
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2)
    tone = np.sin(np.pi * t / 0.5) * (np.sin(phase) + 0.5 * np.sin(3 * phase))
    x = np.pad(0.3 * tone, (SR // 4 + shift, SR // 4 - shift))
    if seed is not None:
        x = x + 0.002 * np.random.default_rng(seed).standard_normal(SR)
    return x.astype(np.float32)


UP, DOWN = (300, 900), (1200, 400)


def _stream(words: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Clips among silence with a little noise; truth as (name, speech start s, speech end s)."""
    parts, truth, pos = [], [], 0
    for i, (name, clip) in enumerate(words):
        gap = int(SR * (1.3 + 0.4 * i))
        parts += [np.zeros(gap, np.float32), clip]
        pos += gap
        truth.append((name, (pos + SR // 4) / SR, (pos + 3 * SR // 4) / SR))
        pos += SR
    parts.append(np.zeros(SR, np.float32))
    audio = np.concatenate(parts)
    return audio + 0.003 * np.random.default_rng(1).standard_normal(len(audio)).astype(np.float32), truth


def _run(embedder, bank, audio, folder=None, config=EventClipConfig()):
    det = Detector(embedder, bank, DetectorConfig(smoothing=1, refractory_ms=2000, threshold_offset=0.0))
    rec = EventRecorder(folder, embedder.window_samples, embedder.model_id, config, hop_ms=100.0) if folder else None
    events, rng, i = [], np.random.default_rng(3), 0
    while i < len(audio):  # chunks of odd sizes, not aligned to hops
        chunk = audio[i : i + int(rng.integers(500, 6000))]
        got = det.process(chunk)
        events += got
        if rec:
            rec.feed(chunk, got)
        i += len(chunk)
    if rec:
        rec.close()
    return events, rec


@pytest.fixture(scope="module")
def impostors(embedder) -> np.ndarray:
    rng = np.random.default_rng(5)
    noise = [(0.1 * rng.standard_normal(SR)).astype(np.float32) for _ in range(30)]
    other = [_word(600 + 40 * k, 200 + 60 * k, seed=k) for k in range(30)]
    return embedder(noise + other)


@pytest.fixture
def enrolled(embedder, impostors) -> KeywordBank:
    """A bank with 'up' enrolled (through kws.enroll) from 3 slightly varied clips."""
    from kws.enroll import enroll

    clips = [_word(*UP, shift=s, seed=k) for k, s in enumerate((0, 160, -160))]
    bank = KeywordBank(embedder.model_id, embedder.dim)
    bank.add(enroll(embedder, "up", clips, impostors=impostors).keyword)
    return bank


def test_event_clips_hold_the_keyword_at_the_reported_time(embedder, tmp_path):
    clips = {"up": _word(*UP), "down": _word(*DOWN)}
    bank = KeywordBank(embedder.model_id, embedder.dim)
    for name, emb in zip(clips, embedder(np.stack(list(clips.values())))):
        bank.add(Keyword(name, emb[None], threshold=0.985, samples=1))
    audio, truth = _stream([(n, clips[n]) for n in ["up", "down", "up", "down"]])
    events, rec = _run(embedder, bank, audio, tmp_path, EventClipConfig(preroll_ms=300, postroll_ms=400))
    assert [e.keyword for e in events] == [w for w, _, _ in truth]
    assert len(rec.written) == len(events)
    for ev, wav, (_, start, end) in zip(events, rec.written, truth):
        side = read_sidecar(wav)
        assert (side["keyword"], side["time"]) == (ev.keyword, round(ev.time, 3))
        assert side["model_id"] == embedder.model_id and side["score"] >= side["threshold"]
        x = load_audio(wav)
        first = round((ev.time - 1.0 - 0.3) * SR)
        assert len(x) == round(1.7 * SR)
        np.testing.assert_allclose(x, audio[first : first + len(x)], atol=2 / 32768)  # 16-bit WAV
        # The keyword lies in the window the sidecar names, and that window scores as it did live.
        a, b = round(side["window_start_s"] * SR), round(side["window_end_s"] * SR)
        w0 = ev.time - 1.0
        assert w0 < start < end <= w0 + 1.0 + 0.1 and (a, b) == (round(0.3 * SR), round(1.3 * SR))
        assert bank.score(embedder(x[a:b][None]))[0, bank.names.index(ev.keyword)] >= 0.98


def test_event_folder_stays_under_its_size_cap(tmp_path):
    one_clip = 44 + 2 * SR * 2 + 600  # WAV header, 2 s of 16-bit audio, roughly the sidecar
    rec = EventRecorder(tmp_path, SR, "m", EventClipConfig(500, 500, max_mb=2.5 * one_clip / 2**20))
    audio = 0.01 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    for k in range(1, 8):
        rec.feed(audio, [Event("up", 0.9, 0.8, float(k))])
    rec.close()
    left = sorted(tmp_path.glob("*.wav"))
    assert len(rec.written) == 7 and len(left) == 2
    assert left == rec.written[-2:]  # the oldest went first
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 2.5 * one_clip
    assert all(p.with_suffix(".json").is_file() for p in left)


def test_feedback_round_trips_through_the_bank_and_undo_restores_it_exactly(
    embedder, enrolled, impostors, random_checkpoint, tmp_path, capsys
):
    bank_path, imp_path, clip = tmp_path / "bank.json", tmp_path / "imp.npz", tmp_path / "down.wav"
    enrolled.save(bank_path)
    np.savez(imp_path, model_id=np.array(embedder.model_id), embeddings=impostors, words=np.array(["x"] * len(impostors)))
    write_audio(clip, np.concatenate([np.zeros(SR // 2, np.float32), _word(*DOWN)]))
    original = bank_path.read_bytes()
    common = ["--bank", str(bank_path), "--model", str(random_checkpoint), "--impostors", str(imp_path)]

    assert main(["feedback", str(clip), "--not", "up", *common]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "->" in out and "expected false-accept" in out
    d = json.loads(bank_path.read_text())
    assert d["version"] == BANK_VERSION
    bank = KeywordBank.load(bank_path, model_id=embedder.model_id)
    kw = bank["up"]
    assert [(e.id, e.kind, e.source) for e in kw.history] == [(1, "negative", "down.wav")]
    assert kw.negatives.shape[1] == embedder.dim and kw.positives.shape == (3, embedder.dim)
    assert kw.info["feedback"]["negatives"] == 1

    assert main(["feedback", str(clip), "--is", "up", *common]) == 0
    kw = KeywordBank.load(bank_path)["up"]
    assert [e.kind for e in kw.history] == ["negative", "positive"] and kw.samples == 4
    assert kw.all_positives.shape == (4, embedder.dim)
    capsys.readouterr()
    assert main(["bank", "show", "up", "--bank", str(bank_path)]) == 0
    show = capsys.readouterr().out
    assert "2 entries" in show and "negative" in show and "positive" in show and "down.wav" in show

    assert main(["bank", "undo", "up", "1", "--bank", str(bank_path)]) == 2  # not the latest
    assert "undo entries 2 first" in capsys.readouterr().err
    assert main(["bank", "undo", "up", "--bank", str(bank_path)]) == 0
    assert main(["bank", "undo", "up", "1", "--bank", str(bank_path)]) == 0
    assert bank_path.read_bytes() == original
    with pytest.raises(BankError, match="no feedback to undo"):
        undo(KeywordBank.load(bank_path), "up")


def test_a_negative_that_is_the_keyword_itself_is_refused(embedder, enrolled, impostors):
    from kws.enroll import prepare_clips

    before = json.dumps(enrolled.to_json())
    # An enrolment clip as enrolment saw it (trimmed and centred): surely the keyword itself.
    same = prepare_clips([_word(*UP, seed=0)], embedder.window_samples, SR)[0][0]
    with pytest.raises(EnrollmentError, match="looks like 'up' itself.*not added as a negative"):
        add_negative(embedder, enrolled, "up", same, impostors=impostors)
    assert json.dumps(enrolled.to_json()) == before


@pytest.mark.parametrize("rule", ["suppress", "raise"])
def test_negatives_stop_the_false_alarm_they_match(embedder, enrolled, impostors, rule, tmp_path):
    audio, truth = _stream([("up", _word(*UP, seed=11)), ("down", _word(*DOWN, seed=12)), ("up", _word(*UP, seed=13)), ("down", _word(*DOWN, seed=14))])
    kw = enrolled["up"]
    # A threshold low enough that the other word fires too: the false alarm to fix.
    down_score = float(kw.score(embedder(_word(*DOWN)[None]))[0])
    kw.threshold = down_score - 0.01
    events, rec = _run(embedder, enrolled, audio, tmp_path)
    false = [w for w, e in zip(rec.written, events) if any(n == "down" and s < e.time < t + 1.1 for n, s, t in truth)]
    assert len(events) == 4 and len(false) == 2
    result = add_negative(embedder, enrolled, "up", false[0], impostors=impostors, config=FeedbackConfig(negative_rule=rule))
    assert "window that fired" in result.how
    kw.threshold = min(kw.threshold, down_score - 0.01) if rule == "suppress" else kw.threshold
    after, _ = _run(embedder, enrolled, audio)
    # Neither the false alarm fed back nor the other utterance of that word fires any more.
    assert not any(any(n == "down" and s < e.time < t + 1.1 for n, s, t in truth) for e in after)


def test_a_negative_keeps_every_window_of_its_clip_that_could_fire(embedder, enrolled, impostors, tmp_path):
    audio, truth = _stream([("down", _word(*DOWN, seed=12)), ("up", _word(*UP, seed=13))])
    kw = enrolled["up"]
    kw.threshold = float(kw.score(embedder(_word(*DOWN)[None]))[0]) - 0.02
    events, rec = _run(embedder, enrolled, audio, tmp_path)
    _, start, end = truth[0]
    clip = next(c for c, e in zip(rec.written, events) if start < e.time < end + 1.1)  # the false alarm on "down"
    side, x = read_sidecar(clip), load_audio(clip)
    centers = kw.centers.copy()
    result = add_negative(embedder, enrolled, "up", clip, impostors=impostors)
    got = kw.history[-1].embeddings
    a, b = round(side["window_start_s"] * SR), round(side["window_end_s"] * SR)
    np.testing.assert_allclose(got[0], embedder(x[a:b][None])[0], atol=1e-5)
    # The others: every window of the clip, one per 100 ms hop, that scored at or above the threshold it fired at.
    starts = [s for s in range(0, len(x) - SR + 1, 1600) if s != a]
    windows = embedder(np.stack([x[s : s + SR] for s in starts]))
    could_fire = windows[(windows @ centers.T).max(axis=1) >= side["threshold"]]
    assert len(could_fire) >= 1 and len(got) == 1 + len(could_fire)
    np.testing.assert_allclose(got[1:], could_fire, atol=1e-5)
    assert f"{len(could_fire)} further window" in result.how
    bank = tmp_path / "bank.json"
    enrolled.save(bank)
    np.testing.assert_allclose(KeywordBank.load(bank)["up"].negatives, got, atol=1e-6)


def test_a_negative_leaves_out_further_windows_that_are_the_keyword_itself(embedder, enrolled, impostors, tmp_path):
    from kws.enroll import prepare_clips

    same = prepare_clips([_word(*UP, seed=0)], embedder.window_samples, SR)[0][0]  # an enrolment clip, as enrolled
    audio = np.concatenate([np.zeros(SR // 2, np.float32), _word(*DOWN, seed=3), same, np.zeros(SR // 2, np.float32)])
    clip = tmp_path / "down_then_up.wav"
    write_audio(clip, audio)
    # An event on "down" whose post-roll holds "up" itself; every window counts as one that could fire.
    (tmp_path / "down_then_up.json").write_text(json.dumps(
        {"format": "kws-event", "keyword": "up", "threshold": -1.0, "window_start_s": 0.5, "window_end_s": 1.5}))
    add_negative(embedder, enrolled, "up", clip, impostors=impostors)
    kept, x = enrolled["up"].negatives, load_audio(clip)
    windows = embedder(np.stack([x[s : s + SR] for s in range(0, len(x) - SR + 1, 1600)]))
    assert np.abs(kept[0] - windows[5]).max() < 1e-5  # the window that fired (0.5-1.5 s) decides ...
    assert 1 < len(kept) < len(windows)  # ... the others are kept but for the keyword itself
    assert not (np.abs(kept[:, None] - windows[15][None]).max(axis=2) < 1e-5).any()  # "up" alone in the window


def test_a_version_2_entry_loads_as_one_window(tmp_path):
    bank = KeywordBank("m", 8)
    c = np.eye(8, dtype=np.float32)[:1]
    bank.add(Keyword("up", c, 0.5, 1, positives=c))
    d = bank.to_json()
    d["version"] = 2
    d["keywords"]["up"]["history"] = [{"id": 1, "kind": "negative", "source": "x.wav", "added": "now",
                                       "embedding": [0.0] * 7 + [1.0], "before": bank["up"].state_json()}]  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps(d))
    np.testing.assert_array_equal(KeywordBank.load(tmp_path / "b.json")["up"].negatives, np.eye(8)[7:])


def test_suppression_is_selective():
    """A window nearer a negative than the keyword is suppressed; one nearer the keyword is not."""
    c, n = np.eye(4, dtype=np.float32)[:2]
    kw = Keyword("up", c[None], threshold=0.5, samples=1)
    near_neg = np.array([[0.6, 0.8, 0, 0]], np.float32)
    near_kw = np.array([[0.8, 0.6, 0, 0]], np.float32)
    before = kw.score(np.concatenate([near_neg, near_kw]))
    kw.history.append(Entry(1, "negative", "x.wav", "now", n[None], kw.state_json()))
    after = kw.score(np.concatenate([near_neg, near_kw]))
    np.testing.assert_allclose(before, [0.6, 0.8], atol=1e-6)
    np.testing.assert_allclose(after, [-1.0, 0.8], atol=1e-6)
    # A window nearer the negative than the center, but nearest of all to an enrolment clip, is kept.
    kw.positives = np.array([[0.3, 0.5, 0.8, 0.1]], np.float32) / np.linalg.norm([0.3, 0.5, 0.8, 0.1])
    odd_clip = kw.positives.copy()
    np.testing.assert_allclose(kw.score(np.concatenate([near_neg, odd_clip])), [-1.0, odd_clip[0] @ c], atol=1e-6)
    kw.negative_rule = "raise"  # under "raise" the threshold does the work, scores stay
    np.testing.assert_allclose(kw.score(np.concatenate([near_neg, near_kw])), [0.6, 0.8], atol=1e-6)


def test_version_1_bank_still_loads_and_takes_negatives(embedder, impostors, tmp_path):
    center = embedder(_word(*UP)[None])[0]
    v1 = {
        "format": "kws-bank",
        "version": 1,
        "model_id": embedder.model_id,
        "dim": embedder.dim,
        "keywords": {
            "up": {
                "centers": [[float(v) for v in center]],
                "threshold": 0.9,
                "samples": 3,
                "info": {"calibration": {"target_far": 0.01, "target_scores": [0.999, 0.998, 0.999]}},
            }
        },
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    bank = KeywordBank.load(path, model_id=embedder.model_id)
    kw = bank["up"]
    assert kw.positives is None and kw.history == [] and kw.negatives is None
    np.testing.assert_allclose(bank.score(center[None]), [[1.0]], atol=1e-5)
    with pytest.raises(EnrollmentError, match="re-enrol"):
        add_positive(embedder, bank, "up", _word(*UP), impostors=impostors)
    add_negative(embedder, bank, "up", _word(*DOWN), impostors=impostors)
    bank.save(path)
    assert json.loads(path.read_text())["version"] == BANK_VERSION
    assert len(KeywordBank.load(path)["up"].history) == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda e: e.update(kind="maybe"), "kind 'maybe'"),
        (lambda e: e.update(embedding=[0.1, 0.2]), "expected \\(n, 8\\)"),
        (lambda e: e.update(embeddings=[]), "expected \\(n, 8\\)"),
        (lambda e: e.pop("before"), "malformed"),
    ],
)
def test_malformed_feedback_entries_give_bank_errors(tmp_path, damage, message):
    bank = KeywordBank("m", 8)
    c = np.eye(8, dtype=np.float32)[:1]
    bank.add(Keyword("up", c, 0.5, 1, positives=c))
    d = bank.to_json()
    entry = {"id": 1, "kind": "negative", "source": "x.wav", "added": "now", "embedding": [0.0] * 7 + [1.0],
             "before": bank["up"].state_json()}
    damage(entry)
    d["keywords"]["up"]["history"] = [entry]
    (tmp_path / "b.json").write_text(json.dumps(d))
    with pytest.raises(BankError, match=message):
        KeywordBank.load(tmp_path / "b.json")


def test_a_negative_suppresses_the_enrolment_clips_it_is_nearer_to_than_their_own_neighbours():
    from kws.scoring import suppressed
    from kws.metrics import normalize

    clips = normalize(np.array([[1.0, 0.2, 0.0, 0.0], [1.0, -0.2, 0.0, 0.0], [1.0, 0.0, 0.2, 0.0]], np.float32))
    loo = np.array([0.97, 0.97, 0.98], np.float32)  # each clip's score against the others' center
    # Nearer to clip 0 (cos 0.998) than clip 0 is to the others (0.92 / 0.96) or to their center: clip 0 is lost.
    twin = normalize(np.array([[1.0, 0.25, 0.0, 0.05]], np.float32))
    assert suppressed(loo, clips, twin).tolist() == [True, False, False]
    # Like the keyword (cos 0.95-0.98 to every clip) but nearer to none of them than they are to each other.
    near = normalize(np.array([[1.0, 0.0, 0.0, 0.25]], np.float32))
    assert not suppressed(loo, clips, near).any()


def test_event_folder_cap_deletes_only_the_clips_kws_saved(tmp_path):
    import os

    from kws.events import EVENT_MANIFEST

    # The user's own recording and notes in the folder, older than anything kws writes.
    meeting, notes = tmp_path / "meeting.wav", tmp_path / "meeting.json"
    write_audio(meeting, 0.1 * np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32))
    notes.write_text('{"title": "weekly"}')
    for p in (meeting, notes):
        os.utime(p, (0, 0))
    mine = {p: p.read_bytes() for p in (meeting, notes)}
    one_clip = 44 + 2 * SR * 2 + 600
    cfg = EventClipConfig(500, 500, max_mb=2.5 * one_clip / 2**20)
    audio = 0.01 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    runs = []
    for _ in range(2):  # a second run also deletes only what kws saved, the first run's clips included
        rec = EventRecorder(tmp_path, SR, "m", cfg)
        for k in range(1, 5):
            rec.feed(audio, [Event("up", 0.9, 0.8, float(k))])
        rec.close()
        runs.append(rec.written)
    assert {p: p.read_bytes() for p in mine} == mine
    left = sorted(p for p in tmp_path.glob("*.wav") if p != meeting)
    assert left == sorted(runs[1][-2:])
    manifest = json.loads((tmp_path / EVENT_MANIFEST).read_text())
    assert manifest["clips"] == [p.name for p in runs[1][-2:]]
    # A manifest naming the user's files (hand-edited, or paths outside the folder) deletes nothing of theirs.
    manifest["clips"] = ["meeting.wav", "../meeting.wav", "/etc/passwd.wav"] + manifest["clips"]
    (tmp_path / EVENT_MANIFEST).write_text(json.dumps(manifest))
    rec = EventRecorder(tmp_path, SR, "m", cfg)
    rec.feed(audio, [Event("up", 0.9, 0.8, 1.0)])
    rec.close()
    assert meeting.is_file() and notes.is_file()


def test_a_clip_holding_an_enrolment_recording_is_refused_as_negative(embedder, enrolled, impostors, tmp_path):

    clips = [_word(*UP, shift=s, seed=k) for k, s in enumerate((0, 160, -160))]
    rng = np.random.default_rng(7)
    before = json.dumps(enrolled.to_json())
    for k, clip in enumerate(clips):
        # The recording at an offset off the 100 ms hop grid, among other sound and quiet noise.
        lead = int(rng.integers(SR // 3, SR)) + 37
        audio = np.concatenate([_word(*DOWN, seed=20 + k)[: SR // 2], np.zeros(lead, np.float32), clip,
                                np.zeros(SR // 2, np.float32)])
        audio += 1e-4 * rng.standard_normal(len(audio)).astype(np.float32)
        path = tmp_path / f"long{k}.wav"
        write_audio(path, audio)
        with pytest.raises(EnrollmentError, match="looks like 'up' itself"):
            add_negative(embedder, enrolled, "up", path, impostors=impostors)
    assert json.dumps(enrolled.to_json()) == before


def test_a_silent_clip_is_refused_as_feedback(embedder, enrolled, impostors):
    for add in (add_negative, add_positive):
        with pytest.raises(EnrollmentError, match="is silent"):
            add(embedder, enrolled, "up", np.full(2 * SR, 1e-5, np.float32), impostors=impostors)


def test_feedback_takes_the_name_as_tidied_and_events_need_a_folder(embedder, enrolled, impostors, tmp_path):
    result = add_negative(embedder, enrolled, " up ", _word(*DOWN, seed=5), impostors=impostors)
    assert result.keyword == "up" and enrolled.names == ["up"] and len(enrolled["up"].history) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(AudioError, match="not a folder"):
        EventRecorder(tmp_path / "file", SR, "m")


def test_feedback_scans_a_clip_at_the_hop_it_was_detected_with(embedder, enrolled, tmp_path):
    import json

    from kws.feedback import clip_windows

    audio, truth = _stream([("down", _word(*DOWN, seed=12)), ("up", _word(*UP, seed=13))])
    kw = enrolled["up"]
    kw.threshold = float(kw.score(embedder(_word(*DOWN)[None]))[0]) - 0.02
    events, rec = _run(embedder, enrolled, audio, tmp_path)
    clip = rec.written[0]
    counts = {}
    for hop_ms in (100.0, 20.0):
        side = json.loads(clip.with_suffix(".json").read_text())
        side["hop_ms"] = hop_ms
        clip.with_suffix(".json").write_text(json.dumps(side))
        counts[hop_ms] = len(clip_windows(embedder, kw, clip)[0])
    # Five times as many windows are scanned at 20 ms: more of them reach the threshold it fired at.
    assert counts[20.0] > counts[100.0] >= 1


def test_event_clips_record_the_detector_hop(embedder, enrolled, tmp_path):
    from kws.events import read_sidecar

    audio, _ = _stream([("down", _word(*DOWN, seed=12)), ("up", _word(*UP, seed=13))])
    _, rec = _run(embedder, enrolled, audio, tmp_path)
    assert rec.written and all(read_sidecar(c)["hop_ms"] == 100.0 for c in rec.written)
