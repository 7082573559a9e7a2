"""Stream building, event matching and the threshold sweep of stream evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from kws.audio import SAMPLE_RATE
from kws.bank import Keyword, KeywordBank
from kws.cli import main
from kws.detect import DetectorConfig
from kws.events import Event
from kws.embedder import load_embedder
from kws.streams import NOTHING_HEARD, TruthItem, build_stream, evaluate_stream, heard, match_events

KEYWORDS = ["cat", "yes"]
DISTRACTORS = ["bat", "no", "left"]


@pytest.fixture(scope="module")
def stream(tiny_corpus):
    return build_stream(tiny_corpus, KEYWORDS, DISTRACTORS, duration_s=30.0, seed=3, subset="testing")


def test_build_stream_places_words_where_the_truth_says(stream):
    audio, truth = stream
    assert audio.dtype == np.float32 and len(audio) == 30 * SAMPLE_RATE
    assert len(truth) >= 8
    assert {t.word for t in truth} <= set(KEYWORDS + DISTRACTORS)
    assert all(t.keyword == (t.word in KEYWORDS) for t in truth)
    ends = [t.end for t in truth]
    starts = [t.start for t in truth]
    assert all(e <= s for e, s in zip(ends[:-1], starts[1:])), "placed words overlap"
    assert ends[-1] <= 30.0
    inside = np.zeros(len(audio), dtype=bool)
    for t in truth:
        inside[int(t.start * SAMPLE_RATE) : int(t.end * SAMPLE_RATE)] = True
    # Speech spans are far louder than the -45 dBFS noise floor between them.
    assert np.sqrt(np.mean(audio[inside] ** 2)) > 10 * np.sqrt(np.mean(audio[~inside] ** 2))


def test_build_stream_is_deterministic_for_a_seed(tiny_corpus, stream):
    audio, truth = build_stream(tiny_corpus, KEYWORDS, DISTRACTORS, duration_s=30.0, seed=3, subset="testing")
    assert truth == stream[1] and np.array_equal(audio, stream[0])
    _, other = build_stream(tiny_corpus, KEYWORDS, DISTRACTORS, duration_s=30.0, seed=4, subset="testing")
    assert other != truth


def test_match_events_counts_hits_false_alarms_and_latency():
    truth = [TruthItem("cat", 1.0, 1.5, True), TruthItem("cat", 5.0, 5.4, True), TruthItem("yes", 8.0, 8.5, True)]
    events = [
        Event("cat", 0.9, 0.8, 1.8),  # hit, 0.3 s after the end
        Event("cat", 0.9, 0.8, 2.0),  # second event on the same word: false alarm
        Event("yes", 0.9, 0.8, 5.2),  # wrong word at 'cat': false alarm
        Event("yes", 0.9, 0.8, 9.1),  # hit, 0.6 s late
    ]
    latencies, false_alarms = match_events(events, truth, window_s=1.0)
    assert latencies == pytest.approx([0.3, 0.6])
    assert [(e.keyword, e.time) for e in false_alarms] == [("cat", 2.0), ("yes", 5.2)]


def test_a_false_alarm_is_named_by_the_word_most_of_its_window_holds():
    truth = [TruthItem("bat", 1.0, 1.6, False), TruthItem("cat", 1.8, 2.2, True), TruthItem("bat", 9.0, 9.5, False)]
    assert heard(Event("cat", 0.9, 0.8, 2.0), truth, window_s=1.0) == "bat"  # 0.6 s of bat, 0.2 s of cat
    assert heard(Event("cat", 0.9, 0.8, 2.6), truth, window_s=1.0) == "cat"
    assert heard(Event("cat", 0.9, 0.8, 4.0), truth, window_s=1.0) == NOTHING_HEARD


def test_threshold_sweep_trades_recall_for_false_alarms(tiny_corpus, stream, random_checkpoint):
    embedder = load_embedder(random_checkpoint)
    audio, truth = stream
    # Centers from the keywords' training clips; the stream holds testing speakers.
    from kws.data.speech_commands import SpeechCommands

    train = SpeechCommands(tiny_corpus, "training", words=KEYWORDS)
    emb = embedder(train.load_all(progress=False))
    bank = KeywordBank(embedder.model_id, embedder.dim)
    for c, word in enumerate(train.classes):
        center = emb[train.labels == c].mean(axis=0)
        bank.add(Keyword(word, (center / np.linalg.norm(center))[None], threshold=0.9, samples=1))
    offsets = [-0.3, -0.1, 0.0, 0.1]
    report = evaluate_stream(embedder, bank, audio, truth, offsets=offsets, cfg=DetectorConfig())
    points = report["points"]
    assert [p["offset"] for p in points] == offsets
    assert report["keyword_occurrences"] == sum(t.keyword for t in truth)
    recalls = [p["recall"] for p in points]
    alarms = [p["false_alarms"] for p in points]
    assert recalls == sorted(recalls, reverse=True) and alarms == sorted(alarms, reverse=True)
    for p in points:  # every false alarm is named by what was being said
        assert sum(n for on in p["false_alarms_on"].values() for n in on.values()) == p["false_alarms"]
        assert set(p["false_alarms_on"]) <= set(KEYWORDS)
    assert 0 < report["windows_embedded"] <= report["hops"]
    # Each keyword alone: its own occurrences, and never more false alarms than all keywords together
    # make at the same offset (alone, no other keyword's event makes it rest).
    per = report["per_keyword"]
    assert sorted(per) == sorted(KEYWORDS)
    assert sum(per[k][0]["occurrences"] for k in per) == report["keyword_occurrences"]
    for k in per:
        rec = [p["recall"] for p in per[k]]
        assert rec == sorted(rec, reverse=True)


def test_stream_eval_cli_writes_json_and_plot(tiny_corpus, random_checkpoint, tmp_path, capsys):
    embedder = load_embedder(random_checkpoint)
    bank = KeywordBank(embedder.model_id, embedder.dim)
    rng = np.random.default_rng(0)
    for word in KEYWORDS:
        v = rng.standard_normal(embedder.dim).astype(np.float32)
        bank.add(Keyword(word, (v / np.linalg.norm(v))[None], threshold=0.5, samples=3))
    bank.save(tmp_path / "bank.json")
    out = tmp_path / "report"
    args = [
        "stream-eval", str(tiny_corpus), "--bank", str(tmp_path / "bank.json"), "--minutes", "0.3",
        "--model", str(random_checkpoint), "--out", str(out), "--hops", str(tmp_path / "hops.npz"),
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "stream_eval.json").read_text())
    assert report["keywords"] == KEYWORDS and report["points"]
    assert (out / "stream_eval.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "keyword occurrences" in printed
    at = min(report["points"], key=lambda p: abs(p["offset"] - 0.18))  # the random model's offset
    assert ("by the word being said" in printed) == (at["false_alarms"] > 0)
    # The saved hops give the same report again; a different stream refuses them.
    assert main(args) == 0
    assert json.loads((out / "stream_eval.json").read_text()) == report
    assert main(args[:5] + ["0.4"] + args[6:]) != 0
    assert "another stream" in capsys.readouterr().err
    # So does a corpus whose clips changed under the same arguments (the same path).
    import shutil

    from kws.audio import load_audio, write_audio

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    moved = [*args[:1], str(corpus), *args[2:-1], str(tmp_path / "moved.npz")]
    assert main(moved) == 0
    for wav in (corpus / KEYWORDS[0]).glob("*.wav"):
        write_audio(wav, 0.5 * load_audio(wav))
    assert main(moved) != 0
    assert "another stream" in capsys.readouterr().err


def test_sentence_stream_places_each_keyword_at_its_labelled_time(tmp_path, caplog):
    from kws.audio import write_audio
    from kws.streams import build_sentence_stream

    rows = ["path,source,word,speaker,gender,dialect,channel,context,licence"]
    rng = np.random.default_rng(0)
    for i, (word, start) in enumerate([("voyager", 1.0), ("operator", 0.5), ("", None), ("", None)]):
        audio = 0.001 * rng.standard_normal(3 * SAMPLE_RATE).astype(np.float32)
        if word:  # a loud burst where the label says the word is
            audio[int(start * SAMPLE_RATE) : int((start + 0.5) * SAMPLE_RATE)] = 0.5
        path = f"s/{i}.wav"
        (tmp_path / "s").mkdir(exist_ok=True)
        write_audio(tmp_path / path, audio, SAMPLE_RATE)
        context = f"whole sentence, word at {start}-{start + 0.5} s" if word else "sentence (no transcript)"
        rows.append(f'{path},x,{word},spk{i},,,,"{context}",')
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    audio, truth = build_sentence_stream(tmp_path, "all", seed=1)
    assert sorted(t.word for t in truth) == ["operator", "voyager"]
    assert len(audio) > 12 * SAMPLE_RATE  # all four sentences and the gaps
    for t in truth:
        span = audio[int(t.start * SAMPLE_RATE) + 10 : int(t.end * SAMPLE_RATE) - 10]
        assert np.all(span == pytest.approx(0.5))
    short, _ = build_sentence_stream(tmp_path, "all", duration_s=1.0, seed=1)
    assert len(short) < 9 * SAMPLE_RATE  # the keyword sentences only
    # Labels that are not an interval (as the pack has) leave their sentence out, with a warning.
    rows += ['s/0.wav,x,wildfire,spk9,,,,"whole sentence, word at 5.134-0.949 s",',
             's/1.wav,x,onword,spk9,,,,"whole sentence, word at 0.000-0.000 s",']  # fmt: skip
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="kws.data.real_pack"):
        _, again = build_sentence_stream(tmp_path, "all", seed=1)
    assert sorted(t.word for t in again) == ["operator", "voyager"]
    assert "5.134-0.949 s, not an interval" in caplog.text and "0.000-0.000 s, not an interval" in caplog.text
