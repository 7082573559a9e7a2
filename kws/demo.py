"""The main job, end to end on bundled data: enrol three keywords, then detect them.

The bundled clips (``kws/assets/demo/``, a Speech Commands layout) are one real
person's own voice, the product's use: the same speaker enrols ``open``, ``close``
and ``speaker`` from three takes each (the *training* split) and then speaks the
stream (the *testing* split: their other takes of the keywords, and the
distractors ``speech signal process project print``; ``speech``/``speaker`` sound
alike). The speaker is one of the real-speech pack's held-out DSPSpeech-20
speakers (MIT licence, © 2019 Zhongyu Chen), never heard in training; the words
themselves are in the default model's training data, spoken by other
DSPSpeech-20 speakers, so this is a new voice saying known words, not new words.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, load_audio, trim_silence, write_audio
from kws.bank import KeywordBank
from kws.detect import Detector, DetectorConfig
from kws.events import Event
from kws.embedder import ASSETS, Embedder
from kws.enroll import EnrollResult, enroll
from kws.errors import DataError
from kws.spoken import SPOKEN_DEFAULT, SpokenConfig
from kws.streams import TruthItem, build_stream, match_events

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_DIR", "DISTRACTORS", "DemoResult", "KEYWORDS", "LICENCE", "SOURCE", "make_demo_assets", "run_demo",
]

DEMO_DIR = ASSETS / "demo"
KEYWORDS = ("open", "close", "speaker")
DISTRACTORS = ("speech", "signal", "process", "project", "print")
SOURCE = "dspspeech20"
# The pack's copy of DSPSpeech-20's MIT notice, which redistributed clips must carry.
LICENCE = "LICENSES/dspspeech20-MIT.txt"


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
    spoken: SpokenConfig | None = SPOKEN_DEFAULT,
) -> DemoResult:
    """Enrol :data:`KEYWORDS` from the bundled clips, then detect them in a generated stream.

    Args:
        embedder: the model (the bundled default, for the README's demo).
        bank_path: if given, the bank is also saved there (to reuse with ``kws detect``).
        minutes: length of the generated stream.
        spoken: the speech engines' voices added to each keyword (:mod:`kws.spoken`); ``None``: the clips alone.
    """
    from kws.data.speech_commands import SpeechCommands

    enrol_set = SpeechCommands(data_dir, subset="training", words=list(KEYWORDS))
    bank = KeywordBank(embedder.model_id, embedder.dim)
    enrolled = []
    for word in KEYWORDS:
        idx = np.flatnonzero(enrol_set.labels == enrol_set.classes.index(word))
        clips = [enrol_set.audio(int(i)) for i in idx]
        result = enroll(embedder, word, clips, bank=bank, clip_names=[enrol_set.clips[i].path.name for i in idx],
                        spoken=spoken)  # fmt: skip
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
        false_alarms=len(false_alarms),
        latencies=latencies,
        stream_seconds=len(audio) / SAMPLE_RATE,
    )


def make_demo_assets(
    pack_root: str | Path,
    out_dir: Path = DEMO_DIR,
    keywords: Sequence[str] = KEYWORDS,
    distractors: Sequence[str] = DISTRACTORS,
    enrol_clips: int = 3,
    distractor_clips: int = 4,
    source: str = SOURCE,
) -> Path:
    """Write the demo clips of one held-out speaker of the real-speech pack at ``pack_root``.

    The speaker is the first (by id) of ``source``'s held-out speakers with more
    than ``enrol_clips`` takes of every keyword and a take of every distractor.
    Each keyword's first ``enrol_clips`` takes (by file name) are its enrolment
    clips (the training split), its other takes stream clips (``testing_list.txt``),
    as are each distractor's first ``distractor_clips`` takes. Clips are trimmed to
    their speech and named ``<speaker>_nohash_<take>.wav``. The pack's MIT notice
    (:data:`LICENCE`) is copied in as ``LICENSE`` with a ``README.md`` saying where
    the clips come from. The folder is built beside ``out_dir`` and then replaces it.

    Raises:
        DataError: not a pack, no such speaker, or no licence file in the pack.
    """
    from kws.data.real_pack import read_pack

    pack_root = Path(pack_root)
    licence = pack_root / LICENCE
    if not licence.is_file():
        raise DataError(f"{pack_root}: no {LICENCE}; the demo clips must carry their source's licence notice")
    takes: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for clip in read_pack(pack_root, "heldout"):
        if clip.source == source:
            takes[clip.speaker][clip.word].append(clip.path)

    def usable(by_word: dict[str, list[Path]]) -> bool:
        return all(len(by_word[w]) > enrol_clips for w in keywords) and all(by_word[w] for w in distractors)

    speaker = next((s for s in sorted(takes) if usable(takes[s])), None)
    if speaker is None:
        raise DataError(
            f"{pack_root}: no held-out {source} speaker has more than {enrol_clips} takes of each of "
            f"{', '.join(keywords)} and a take of each of {', '.join(distractors)}"
        )
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    testing = []
    for word in [*keywords, *distractors]:
        paths = sorted(takes[speaker][word], key=lambda p: p.name)
        chosen = paths if word in keywords else paths[:distractor_clips]
        for n, path in enumerate(chosen):
            rel = f"{word}/{speaker}_nohash_{path.stem.rsplit('_', 1)[-1]}.wav"
            write_audio(tmp / rel, trim_silence(load_audio(path, SAMPLE_RATE)))
            if word not in keywords or n >= enrol_clips:
                testing.append(rel)
    (tmp / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (tmp / "validation_list.txt").write_text("")
    shutil.copyfile(licence, tmp / "LICENSE")
    (tmp / "README.md").write_text(
        f"# kws demo clips\n\nOne speaker ({speaker}) of DSPSpeech-20 (github.com/zhongyuchen/DSPSpeech-20, "
        f"MIT licence, © 2019 Zhongyu Chen; notice in `LICENSE`), via the kws real-speech pack: "
        f"{enrol_clips} takes each of {', '.join(keywords)} to enrol (the training split), their other "
        f"takes and {distractor_clips} takes each of {', '.join(distractors)} for the stream "
        "(`testing_list.txt`); trimmed to the speech, 16 kHz 16-bit WAV. The speaker is held out of the "
        "bundled models' training; the words are not (other DSPSpeech-20 speakers say them there). "
        "Rebuilt by `kws demo --make-assets PACK_ROOT`.\n",
        encoding="utf-8",
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
