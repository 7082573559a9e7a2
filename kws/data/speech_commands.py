"""Google Speech Commands (v1/v2) and corpora in its layout (the synthetic corpus).

Layout: one folder per word holding ``<speaker>_nohash_<n>.wav`` clips,
``validation_list.txt`` and ``testing_list.txt`` (relative paths ``word/file.wav``;
training is every clip in neither list) and ``_background_noise_/`` (long noise
recordings). The canonical test archive's ``_unknown_/`` (``<word>_<speaker>_nohash_<n>.wav``)
and ``_silence_/`` folders are read too, so the 12-class test set loads as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.audio import SAMPLE_RATE, float_to_pcm16, load_audio, pad_or_crop
from kws.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "ARCHIVES", "BACKGROUND_DIR", "CLIP_SAMPLES", "Clip", "LIST_FILES", "SILENCE", "SUBSETS", "SpeechCommands",
    "UNKNOWN", "background_noise", "download_speech_commands", "list_words", "speaker_of",
]

CLIP_SAMPLES = SAMPLE_RATE
BACKGROUND_DIR = "_background_noise_"
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
SUBSETS = ("training", "validation", "testing", "all")
LIST_FILES = {"validation": "validation_list.txt", "testing": "testing_list.txt"}

# Official archives and their SHA-256 (as published by torchaudio's SPEECHCOMMANDS and
# TensorFlow Datasets' speech_commands checksums.tsv).
ARCHIVES = {
    1: (
        "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
        "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    ),
    2: (
        "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
    ),
}


@dataclass(frozen=True)
class Clip:
    """One 1 s example: a file, the word spoken, its speaker, and where it starts.

    ``offset`` (samples) is non-zero only for ``_silence_`` clips cut from a
    background-noise file.
    """

    path: Path
    word: str
    speaker: str
    offset: int = 0


def speaker_of(filename: str) -> str:
    """Speaker id of a Speech Commands file name: the part before ``_nohash_``.

    In the test archive's ``_unknown_`` folder names read ``<word>_<speaker>_nohash_<n>``;
    speaker ids never contain ``_``, so the speaker is the last ``_`` piece.
    """
    name = Path(filename).name
    if "_nohash_" not in name:
        raise DataError(f"{filename}: not a Speech Commands clip name (expected <speaker>_nohash_<n>.wav)")
    return name.split("_nohash_", 1)[0].rsplit("_", 1)[-1]


def list_words(root: str | os.PathLike) -> list[str]:
    """Word folders of a corpus, sorted (``_background_noise_`` and other ``_*`` folders excluded)."""
    root = _check_root(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def background_noise(root: str | os.PathLike) -> list[np.ndarray]:
    """The ``_background_noise_`` recordings as 16 kHz float32 ``(samples,)`` arrays ([] if none)."""
    return [load_audio(p) for p in _noise_files(_check_root(root))]


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such corpus folder (download Speech Commands with `kws download`, "
            f"or make a synthetic corpus with `kws synth`)"
        )
    return root


def _noise_files(root: Path) -> list[Path]:
    folder = root / BACKGROUND_DIR
    return sorted(folder.glob("*.wav")) if folder.is_dir() else []


def _wav_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav" and not p.name.startswith("."))


def _read_list(root: Path, name: str) -> set[str]:
    """Relative paths in a split list file; each line must read ``word/file.wav``."""
    path = root / name
    if not path.is_file():
        raise DataError(f"{path}: split list missing (a Speech Commands corpus has {name}); use subset='all'")
    entries = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 2 or not all(parts) or ".." in parts or not line.lower().endswith(".wav"):
            raise DataError(f"{path}:{lineno}: malformed entry {line!r} (expected word/file.wav)")
        entries.add(line)
    return entries


class SpeechCommands:
    """Clips of one subset of a Speech Commands-layout corpus, with integer labels.

    Classes are ``words`` (in the given order; default: every word folder except
    ``heldout_words``, sorted), then ``_unknown_`` (the remaining, non-held-out words)
    if ``include_unknown``, then ``_silence_`` if ``include_silence``. Silence clips
    are 1 s cuts of the background-noise files (``silence_clips`` of them; default:
    the mean number of clips per word class), deterministic for ``seed`` and subset.

    ``speakers``, if given, keeps only those speakers' clips (e.g. one half of a test set).

    ``dataset[i]`` is ``(audio, label)``: float32 ``(16000,)`` (centre padded or
    cropped) and an int.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subset: str = "training",
        words: Sequence[str] | None = None,
        heldout_words: Sequence[str] = (),
        include_unknown: bool = False,
        include_silence: bool = False,
        silence_clips: int | None = None,
        seed: int = 0,
        speakers: Sequence[str] | None = None,
    ) -> None:
        if subset not in SUBSETS:
            raise DataError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
        self.root = _check_root(root)
        available = list_words(self.root)
        heldout = set(heldout_words)
        if words is None:
            words = [w for w in available if w not in heldout]
        words = list(words)
        missing = [w for w in words if w not in available]
        if missing:
            raise DataError(f"{self.root}: no folder for word(s) {', '.join(missing)}")
        if heldout & set(words):
            raise DataError(f"word(s) {', '.join(sorted(heldout & set(words)))} are both selected and held out")
        if len(set(words)) != len(words):
            raise DataError("a word is selected twice")
        if not words and not include_unknown and not include_silence:
            raise DataError(f"{self.root}: no words to read")

        self.classes = words + ([UNKNOWN] if include_unknown else []) + ([SILENCE] if include_silence else [])
        keep = self._subset_filter(subset)
        clips: list[Clip] = []
        labels: list[int] = []
        for word in available:
            if word in heldout or (word not in words and not include_unknown):
                continue
            label = self.classes.index(word) if word in words else self.classes.index(UNKNOWN)
            for path in _wav_files(self.root / word):
                if keep(f"{word}/{path.name}"):
                    clips.append(Clip(path, word, speaker_of(path.name)))
                    labels.append(label)
        if include_unknown and (self.root / UNKNOWN).is_dir():
            for path in _wav_files(self.root / UNKNOWN):
                word = path.name.split("_", 1)[0]
                if word not in heldout and keep(f"{UNKNOWN}/{path.name}"):
                    clips.append(Clip(path, word, speaker_of(path.name)))
                    labels.append(self.classes.index(UNKNOWN))
        if include_silence:
            word_clips = sum(1 for lab in labels if self.classes[lab] in words)
            silence = self._silence(subset, silence_clips, word_clips // max(len(words), 1), seed, keep)
            clips += silence
            labels += [self.classes.index(SILENCE)] * len(silence)

        if speakers is not None:
            # Silence cuts have no speaker: they stay.
            keep_spk = set(speakers)
            kept = [i for i, c in enumerate(clips) if c.speaker in keep_spk or self.classes[labels[i]] == SILENCE]
            clips, labels = [clips[i] for i in kept], [labels[i] for i in kept]
        self.clips = clips
        self.labels = np.asarray(labels, dtype=np.int64)
        self.speakers = np.asarray([c.speaker for c in clips], dtype=str)
        self._noise_cache: dict[Path, np.ndarray] = {}
        log.info("%s %s: %d clips, %d classes", self.root, subset, len(clips), len(self.classes))

    def _subset_filter(self, subset: str) -> Callable[[str], bool]:
        """A predicate on ``word/file.wav``: is this clip in ``subset``?"""
        if subset == "all":
            return lambda rel: True
        lists = {name: _read_list(self.root, fname) for name, fname in LIST_FILES.items()}
        if subset == "training":
            held = lists["validation"] | lists["testing"]
            return lambda rel: rel not in held
        chosen = lists[subset]
        return lambda rel: rel in chosen

    def _silence(
        self, subset: str, count: int | None, default: int, seed: int, keep: Callable[[str], bool]
    ) -> list[Clip]:
        """Silence clips: the test archive's ``_silence_/`` files, else cuts of background noise."""
        folder = self.root / SILENCE
        if folder.is_dir():
            return [Clip(p, SILENCE, p.stem) for p in _wav_files(folder) if keep(f"{SILENCE}/{p.name}")][:count]
        noises = _noise_files(self.root)
        if not noises:
            raise DataError(f"{self.root / BACKGROUND_DIR}: no background-noise .wav files to cut silence from")
        lengths = []
        for p in noises:
            try:
                lengths.append(sf.info(str(p)).frames)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise DataError(f"{p}: unreadable background-noise file ({exc})") from exc
        usable = [(p, n) for p, n in zip(noises, lengths) if n >= CLIP_SAMPLES]
        if not usable:
            raise DataError(f"{self.root / BACKGROUND_DIR}: no noise file is at least 1 s long")
        count = default if count is None else count
        rng = np.random.default_rng([seed, SUBSETS.index(subset)])
        clips = []
        for _ in range(count):
            path, n = usable[int(rng.integers(len(usable)))]
            clips.append(Clip(path, SILENCE, path.stem, int(rng.integers(0, n - CLIP_SAMPLES + 1))))
        return clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.audio(i), int(self.labels[i])

    def audio(self, i: int) -> np.ndarray:
        """Clip ``i`` as float32 ``(16000,)``."""
        clip = self.clips[i]
        if clip.path.parent.name == BACKGROUND_DIR:
            if clip.path not in self._noise_cache:
                self._noise_cache[clip.path] = load_audio(clip.path)
            return self._noise_cache[clip.path][clip.offset : clip.offset + CLIP_SAMPLES]
        return pad_or_crop(load_audio(clip.path), CLIP_SAMPLES)

    def load_all(self, progress: bool = True, threads: int | None = None, pcm16: bool = False) -> np.ndarray:
        """Every clip in memory, ``(len(self), 16000)`` (read with a thread pool): float32, or
        int16 PCM when ``pcm16``: half the memory, and each clip is converted as it is read,
        so no float copy of a large training set is ever held."""
        from tqdm import tqdm

        out = np.empty((len(self), CLIP_SAMPLES), dtype=np.int16 if pcm16 else np.float32)
        # Noise files first, once, so that threads do not race to fill the cache.
        for clip in self.clips:
            if clip.path.parent.name == BACKGROUND_DIR and clip.path not in self._noise_cache:
                self._noise_cache[clip.path] = load_audio(clip.path)

        def fill(i: int) -> None:
            out[i] = float_to_pcm16(self.audio(i)) if pcm16 else self.audio(i)

        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.map(fill, range(len(self))), total=len(self), desc="loading", unit="clip",
                          disable=not progress):  # fmt: skip
                pass
        return out


# ---------------------------------------------------------------------------- download


def download_speech_commands(
    version: int,
    dest: Path,
    url: str | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Download, verify and extract Speech Commands ``version`` (1 or 2) into ``dest``.

    The archive goes to ``dest/speech_commands_v0.0N.tar.gz.part`` first; an
    interrupted download resumes from it (HTTP Range). The SHA-256 must match
    ``sha256`` (default: the official archive's). Returns the corpus root
    ``dest/speech_commands_v0.0N``; if it is already there, nothing is downloaded.
    """
    if version not in ARCHIVES:
        raise DataError(f"unknown Speech Commands version {version}; choose 1 or 2")
    official_url, official_sha = ARCHIVES[version]
    url = url or official_url
    sha256 = (sha256 or official_sha).lower()
    dest = Path(dest)
    name = f"speech_commands_v0.0{version}"
    root = dest / name
    if (root / LIST_FILES["testing"]).is_file():
        log.info("%s already there", root)
        return root
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.tar.gz"
    if archive.exists():  # copied by hand, or verified by an earlier run that did not finish extracting
        digest = _sha256(archive)
        if digest != sha256:
            raise DataError(f"{archive}: checksum mismatch (SHA-256 {digest}, expected {sha256}); delete it")
    else:
        part = archive.with_name(archive.name + ".part")
        _fetch(url, part, progress)
        digest = _sha256(part)
        if digest != sha256:
            part.unlink()
            raise DataError(
                f"{url}: checksum mismatch (SHA-256 {digest}, expected {sha256}); "
                f"the partial download was removed, run the command again"
            )
        os.replace(part, archive)
    _extract(archive, root)
    archive.unlink()
    return root


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing after the bytes already there."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the file is complete
            return
        raise DataError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"{url}: cannot download ({getattr(exc, 'reason', exc)}); no network? Download the archive "
            f"by hand on a machine that has one, copy it to {part.with_suffix('')} "
            f"and run the command again (or extract it yourself: tar xzf ARCHIVE -C FOLDER)"
        ) from exc
    with response:
        length = response.headers.get("Content-Length")
        if have and getattr(response, "status", None) != 206:
            # The server (or a file:// URL) ignored the Range: skip what we already have.
            _skip(response, have)
            length = int(length) - have if length else None
        total = have + int(length) if length else None
        with open(part, "ab") as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name, disable=not progress
        ) as bar:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
                bar.update(len(chunk))


def _skip(stream, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            break
        n -= len(chunk)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _extract(archive: Path, root: Path) -> None:
    """Extract ``archive`` into ``root`` via a temporary folder; refuse unsafe members."""
    tmp = root.with_name(f".{root.name}.extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: unsafe archive member {m.name!r} (absolute path, '..' or a link)")
            # The "data" filter (Python >= 3.10.12 / 3.11.4) re-checks what the loop above checked.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **safe)
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: cannot extract ({exc}); delete it and download again") from exc
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
