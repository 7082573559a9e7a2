"""Reading the Speech Commands layout (on the synthetic tiny corpus) and downloading it."""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from kws.audio import write_audio
from kws.data.speech_commands import (
    SILENCE,
    UNKNOWN,
    SpeechCommands,
    background_noise,
    download_speech_commands,
    list_words,
    speaker_of,
)
from kws.errors import DataError

from conftest import TINY_WORDS


def test_speaker_of() -> None:
    assert speaker_of("0a7c2a8d_nohash_3.wav") == "0a7c2a8d"
    assert speaker_of("some/dir/beef0001_nohash_0.wav") == "beef0001"
    assert speaker_of("backward_0cb74144_nohash_2.wav") == "0cb74144"  # test archive's _unknown_ naming
    with pytest.raises(DataError, match="1024.wav"):
        speaker_of("1024.wav")


def test_list_words_and_noise(tiny_corpus: Path) -> None:
    assert list_words(tiny_corpus) == sorted(TINY_WORDS)
    noises = background_noise(tiny_corpus)
    assert len(noises) == 4 and all(n.dtype == np.float32 and n.shape == (80000,) for n in noises)


def test_subsets_partition_clips_and_speakers(tiny_corpus: Path) -> None:
    parts = {s: SpeechCommands(tiny_corpus, s) for s in ("training", "validation", "testing")}
    everything = SpeechCommands(tiny_corpus, "all")
    assert len(everything) == 6 * 12 == sum(len(d) for d in parts.values())
    paths = [{c.path for c in d.clips} for d in parts.values()]
    assert set.union(*paths) == {c.path for c in everything.clips}
    speakers = {s: set(d.speakers) for s, d in parts.items()}
    assert len(speakers["training"]) == 8 and len(speakers["validation"]) == 2 and len(speakers["testing"]) == 2
    assert not speakers["training"] & speakers["validation"]
    assert not speakers["training"] & speakers["testing"]
    assert not speakers["validation"] & speakers["testing"]
    listed = set((tiny_corpus / "validation_list.txt").read_text().split())
    assert {f"{c.word}/{c.path.name}" for c in parts["validation"].clips} == listed


def test_labels_classes_and_items(tiny_corpus: Path) -> None:
    ds = SpeechCommands(tiny_corpus, "training", words=["yes", "no"], heldout_words=["cat"], include_unknown=True)
    assert ds.classes == ["yes", "no", UNKNOWN]
    assert ds.labels.dtype == np.int64 and ds.speakers.shape == (len(ds),)
    words_by_label = {lab: {c.word for c, l2 in zip(ds.clips, ds.labels) if l2 == lab} for lab in range(3)}
    assert words_by_label == {0: {"yes"}, 1: {"no"}, 2: {"bat", "left", "seven"}}  # "cat" is held out
    audio, label = ds[5]
    assert audio.shape == (16000,) and audio.dtype == np.float32 and isinstance(label, int)
    everything = ds.load_all(progress=False)
    assert everything.shape == (len(ds), 16000) and np.array_equal(everything[5], audio)
    pcm = ds.load_all(progress=False, pcm16=True)
    assert pcm.dtype == np.int16 and np.abs(pcm / 32768.0 - everything).max() <= 0.5 / 32768 + 1e-9

    default = SpeechCommands(tiny_corpus, "testing", heldout_words=["seven"])
    assert default.classes == sorted(set(TINY_WORDS) - {"seven"})


def test_silence_class(tiny_corpus: Path) -> None:
    ds = SpeechCommands(tiny_corpus, "training", words=["cat", "bat"], include_silence=True, seed=1)
    silence = [c for c in ds.clips if c.word == SILENCE]
    assert ds.classes == ["cat", "bat", SILENCE]
    assert len(silence) == 8  # default: the mean clips per word class
    assert all(c.path.parent.name == "_background_noise_" and 0 <= c.offset <= 80000 - 16000 for c in silence)
    assert len({c.offset for c in silence}) > 1
    i = ds.clips.index(silence[0])
    audio, label = ds[i]
    assert label == 2 and audio.shape == (16000,) and np.abs(audio).max() > 0.01
    again = SpeechCommands(tiny_corpus, "training", words=["cat", "bat"], include_silence=True, seed=1)
    assert again.clips == ds.clips
    assert len(SpeechCommands(tiny_corpus, "testing", words=["cat"], include_silence=True, silence_clips=3)) == 2 + 3
    loaded = ds.load_all(progress=False)
    assert np.array_equal(loaded[i], audio)


def test_bad_corpora_are_reported(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such corpus"):
        SpeechCommands(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no folder for word"):
        SpeechCommands(tiny_corpus, words=["yes", "zebra"])
    with pytest.raises(DataError, match="both selected and held out"):
        SpeechCommands(tiny_corpus, words=["yes"], heldout_words=["yes"])
    with pytest.raises(DataError, match="subset"):
        SpeechCommands(tiny_corpus, subset="train")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_corpus, broken)
    (broken / "testing_list.txt").write_text("yes/ok_nohash_0.wav\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"testing_list.txt:2: malformed"):
        SpeechCommands(broken, "training")
    (broken / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt: split list missing"):
        SpeechCommands(broken, "testing")
    assert len(SpeechCommands(broken, "all")) == 72  # no lists needed for everything
    (broken / "yes" / "stray.wav").write_bytes(b"")
    with pytest.raises(DataError, match="stray.wav"):
        SpeechCommands(broken, "all")


def test_reads_test_archive_layout(tmp_path: Path) -> None:
    """The canonical test archive keeps other words in _unknown_/ and silence in _silence_/."""
    tone = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    for rel in ("yes/aa01_nohash_0.wav", "_unknown_/bed_bb02_nohash_1.wav", "_unknown_/cat_cc03_nohash_0.wav",
                "_silence_/17.wav"):  # fmt: skip
        write_audio(tmp_path / rel, tone)
    ds = SpeechCommands(tmp_path, "all", words=["yes"], heldout_words=["cat"], include_unknown=True,
                        include_silence=True)  # fmt: skip
    assert ds.classes == ["yes", UNKNOWN, SILENCE]
    assert [(c.word, c.speaker, int(lab)) for c, lab in zip(ds.clips, ds.labels)] == [
        ("yes", "aa01", 0), ("bed", "bb02", 1), (SILENCE, "17", 2)
    ]  # fmt: skip


# ---------------------------------------------------------------------------- download


def _archive(tmp_path: Path, members: dict[str, bytes]) -> tuple[Path, str]:
    path = tmp_path / "src" / "sc.tar.gz"
    path.parent.mkdir(exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def small_archive(tmp_path: Path) -> tuple[Path, str]:
    write_audio(tmp_path / "clip.wav", np.zeros(16000, np.float32))
    clip = (tmp_path / "clip.wav").read_bytes()
    members = {
        "./validation_list.txt": b"yes/aa01_nohash_0.wav\n",
        "./testing_list.txt": b"yes/bb02_nohash_0.wav\n",
        "./yes/aa01_nohash_0.wav": clip,
        "./yes/bb02_nohash_0.wav": clip,
        "./yes/cc03_nohash_0.wav": clip,
        "./_background_noise_/noise.wav": clip,
    }
    return _archive(tmp_path, members)


def test_download_verifies_and_extracts(small_archive: tuple[Path, str], tmp_path: Path) -> None:
    src, sha = small_archive
    root = download_speech_commands(2, tmp_path / "data", url=src.as_uri(), progress=False, sha256=sha)
    assert root == tmp_path / "data" / "speech_commands_v0.02"
    assert [len(SpeechCommands(root, s)) for s in ("training", "validation", "testing")] == [1, 1, 1]
    assert not list((tmp_path / "data").glob("*.part")) and not list((tmp_path / "data").glob("*.tar.gz"))
    src.unlink()  # already there: nothing is fetched again
    assert download_speech_commands(2, tmp_path / "data", url=src.as_uri(), sha256=sha) == root


def test_download_resumes_from_partial_file(small_archive: tuple[Path, str], tmp_path: Path) -> None:
    src, sha = small_archive
    data = src.read_bytes()
    dest = tmp_path / "data"
    dest.mkdir()
    part = dest / "speech_commands_v0.01.tar.gz.part"
    part.write_bytes(data[: len(data) // 2])
    root = download_speech_commands(1, dest, url=src.as_uri(), progress=False, sha256=sha)
    assert (root / "yes" / "cc03_nohash_0.wav").is_file() and not part.exists()

    # A partial file that is kept and continued: a wrong prefix shows up as a checksum mismatch.
    dest2 = tmp_path / "data2"
    dest2.mkdir()
    part2 = dest2 / part.name
    part2.write_bytes(b"x" * (len(data) // 2))
    with pytest.raises(DataError, match="checksum mismatch"):
        download_speech_commands(1, dest2, url=src.as_uri(), progress=False, sha256=sha)
    assert not part2.exists()  # removed, so that the next run starts clean
    assert download_speech_commands(1, dest2, url=src.as_uri(), progress=False, sha256=sha).is_dir()


def test_download_refuses_bad_archives(small_archive: tuple[Path, str], tmp_path: Path) -> None:
    src, sha = small_archive
    with pytest.raises(DataError, match="checksum mismatch"):
        download_speech_commands(2, tmp_path / "a", url=src.as_uri(), progress=False, sha256="0" * 64)
    evil, evil_sha = _archive(tmp_path, {"./testing_list.txt": b"", "../escaped.txt": b"gotcha"})
    with pytest.raises(DataError, match="unsafe archive member"):
        download_speech_commands(2, tmp_path / "b", url=evil.as_uri(), progress=False, sha256=evil_sha)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "b" / "speech_commands_v0.02").exists()
    with pytest.raises(DataError, match="no network"):
        download_speech_commands(2, tmp_path / "c", url="http://speech-commands.invalid/sc.tar.gz", progress=False)
    with pytest.raises(DataError, match="version"):
        download_speech_commands(3, tmp_path / "d")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path, honouring ``Range: bytes=N-``; records the ranges asked."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        data = self.server.payload
        asked = self.headers.get("Range")
        self.server.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


def test_download_resumes_over_http_with_range(small_archive: tuple[Path, str], tmp_path: Path) -> None:
    src, sha = small_archive
    data = src.read_bytes()
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.payload, server.ranges = data, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "data"
        dest.mkdir()
        (dest / "speech_commands_v0.02.tar.gz.part").write_bytes(data[:100])
        url = f"http://127.0.0.1:{server.server_port}/speech_commands_v0.02.tar.gz"
        root = download_speech_commands(2, dest, url=url, progress=False, sha256=sha)
        assert (root / "testing_list.txt").is_file()
        assert server.ranges == ["bytes=100-"]  # only the missing bytes were asked for
    finally:
        server.shutdown()
        server.server_close()
