"""The main job, end to end on bundled data: enrol three keywords, then detect them.

The bundled clips (``kws/assets/demo/``, a Speech Commands layout) are words the
default model never trained on, spoken by synthetic speakers it never heard:
each keyword's enrolment clips are the *training* split, the stream's clips the
*testing* split (other speakers). Two of the keywords, ``three`` and ``tree``,
sound alike.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, trim_silence, write_audio
from kws.bank import KeywordBank
from kws.detect import Detector, DetectorConfig
from kws.events import Event
from kws.embedder import ASSETS, Embedder
from kws.enroll import EnrollResult, enroll
from kws.errors import DataError
from kws.streams import TruthItem, build_stream, match_events

log = logging.getLogger(__name__)

__all__ = ["DEMO_DIR", "DISTRACTORS", "DemoResult", "KEYWORDS", "make_demo_assets", "run_demo"]

DEMO_DIR = ASSETS / "demo"
KEYWORDS = ("marvin", "three", "tree")
DISTRACTORS = ("bed", "bird", "four", "sheila", "wow", "learn")


@dataclass
class DemoResult:
    """What the demo enrolled and found."""

    enrolled: list[EnrollResult]
    events: list[Event]
    truth: list[TruthItem]
    hits: int
    misses: int
    false_alarms: int
    latencies: list[float] = field(default_factory=list)
    stream_seconds: float = 0.0


def run_demo(
    embedder: Embedder,
    bank_path: str | Path | None = None,
    minutes: float = 1.0,
    seed: int = 0,
    cfg: DetectorConfig = DetectorConfig(),
    data_dir: Path = DEMO_DIR,
) -> DemoResult:
    """Enrol :data:`KEYWORDS` from the bundled clips, then detect them in a generated stream.

    Args:
        embedder: the model (the bundled default, for the README's demo).
        bank_path: if given, the bank is also saved there (to reuse with ``kws detect``).
        minutes: length of the generated stream.
    """
    from kws.data.speech_commands import SpeechCommands

    enrol_set = SpeechCommands(data_dir, subset="training", words=list(KEYWORDS))
    bank = KeywordBank(embedder.model_id, embedder.dim)
    enrolled = []
    for word in KEYWORDS:
        idx = np.flatnonzero(enrol_set.labels == enrol_set.classes.index(word))
        clips = [enrol_set.audio(int(i)) for i in idx]
        result = enroll(embedder, word, clips, bank=bank, clip_names=[enrol_set.clips[i].path.name for i in idx])
        bank.add(result.keyword)
        enrolled.append(result)
    if bank_path is not None:
        bank.save(bank_path)

    audio, truth = build_stream(data_dir, list(KEYWORDS), list(DISTRACTORS), minutes * 60, seed=seed)
    detector = Detector(embedder, bank, cfg)
    events = []
    for i in range(0, len(audio), SAMPLE_RATE):
        events += detector.process(audio[i : i + SAMPLE_RATE])
    targets = [t for t in truth if t.keyword]
    latencies, false_alarms = match_events(events, targets, embedder.window_samples / SAMPLE_RATE)
    return DemoResult(
        enrolled=enrolled,
        events=events,
        truth=truth,
        hits=len(latencies),
        misses=len(targets) - len(latencies),
        false_alarms=false_alarms,
        latencies=latencies,
        stream_seconds=len(audio) / SAMPLE_RATE,
    )


def make_demo_assets(
    corpus_root: str | Path,
    out_dir: Path = DEMO_DIR,
    keywords: Sequence[str] = KEYWORDS,
    distractors: Sequence[str] = DISTRACTORS,
    enrol_clips: int = 3,
) -> Path:
    """Copy the demo clips out of a synthetic corpus's testing split (speakers unseen in training).

    The first ``enrol_clips`` speakers of each keyword become its enrolment clips
    (the training split of the demo folder); the other speakers' clips, and the
    distractors, its stream clips (listed in ``testing_list.txt``). Clips are
    trimmed to their speech, so the folder stays small.
    """
    from kws.data.speech_commands import SpeechCommands

    words = list(keywords) + list(distractors)
    corpus = SpeechCommands(corpus_root, subset="testing", words=words)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    testing = []
    for word in words:
        idx = np.flatnonzero(corpus.labels == corpus.classes.index(word))
        if word in keywords and len(idx) <= enrol_clips:
            raise DataError(f"{corpus_root}: {word!r} has {len(idx)} testing clips, need more than {enrol_clips}")
        for n, i in enumerate(idx):
            clip = corpus.clips[int(i)]
            rel = f"{word}/{clip.path.name}"
            write_audio(out_dir / rel, trim_silence(corpus.audio(int(i))))
            if word not in keywords or n >= enrol_clips:
                testing.append(rel)
    (out_dir / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (out_dir / "validation_list.txt").write_text("")
    return out_dir
