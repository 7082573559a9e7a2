"""kws.Spotter, the one-object API, and the examples built on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import kws
from kws.audio import load_audio, write_audio
from kws.bank import KeywordBank
from kws.demo import DEMO_DIR as DEMO
from kws.demo import DISTRACTORS, KEYWORDS
from kws.errors import BankError, EnrollmentError

REPO = Path(__file__).resolve().parents[1]
WORD = KEYWORDS[0]


def _enrol_clips(word: str) -> list[Path]:
    """The demo's enrolment clips of ``word``: those not in its testing list."""
    testing = set((DEMO / "testing_list.txt").read_text().split())
    return [p for p in sorted((DEMO / word).glob("*.wav")) if f"{word}/{p.name}" not in testing]


def _recordings(tmp_path: Path, word: str) -> list[Path]:
    """The demo's testing clips of ``word``, each with 0.75 s of silence either side, as a recording."""
    testing = [t for t in (DEMO / "testing_list.txt").read_text().split() if t.startswith(f"{word}/")]
    silence = np.zeros(12000, np.float32)
    out = []
    for rel in testing:
        path = tmp_path / rel.replace("/", "_")
        write_audio(path, np.concatenate([silence, load_audio(DEMO / rel), silence]))
        out.append(path)
    return out


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spotter() -> kws.Spotter:
    s = kws.Spotter()
    s.enroll(WORD, _enrol_clips(WORD))
    return s


def test_file_batch_example_finds_the_keyword_in_its_files_only(tmp_path: Path, capsys) -> None:
    mine = _recordings(tmp_path, WORD)
    others = [r for w in (*KEYWORDS[1:], *DISTRACTORS) for r in _recordings(tmp_path, w)]
    bank = tmp_path / "bank.json"
    args = ["--enroll", WORD, *map(str, _enrol_clips(WORD)), "--save", str(bank), "--", *map(str, mine + others)]
    assert _example("file_batch").main(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    found = {e["file"] for e in events}
    # Its recordings, and none of the speaker's other words.
    assert found == set(map(str, mine)), (found, mine)
    assert {e["keyword"] for e in events} == {WORD}
    assert all(e["score"] >= e["threshold"] for e in events)
    assert kws.Spotter(bank=bank).keywords == [WORD]


def test_spotter_detects_chunks_and_calls_back(spotter: kws.Spotter, tmp_path: Path) -> None:
    audio = load_audio(_recordings(tmp_path, WORD)[0])
    heard = []
    events = list(spotter.detect((audio[i : i + 1600] for i in range(0, len(audio), 1600)), callback=heard.append))
    assert [e.keyword for e in events] == [WORD] and heard == events


def test_spotter_feedback_and_refusals(spotter: kws.Spotter, tmp_path: Path) -> None:
    other = _recordings(tmp_path, DISTRACTORS[0])[0]
    result = spotter.feedback(WORD, other)  # "that was not the keyword"
    assert result.keyword == WORD and result.entry.kind == "negative"
    assert spotter.bank[WORD].negatives is not None and len(spotter.bank[WORD].negatives) >= 1
    with pytest.raises(EnrollmentError, match="already enrolled"):
        spotter.enroll(f" {WORD} ", _enrol_clips(WORD))
    # Enrolled as kws enroll does by default: the speech engines' voices added; spoken=None: the clips alone.
    assert spotter.bank[WORD].spoken is not None
    assert spotter.enroll(WORD, _enrol_clips(WORD), replace=True, spoken=None).keyword.spoken is None
    with pytest.raises(BankError):
        kws.Spotter(bank=KeywordBank("another-model", spotter.embedder.dim))
