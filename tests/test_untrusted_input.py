"""Parsers of outside input, tried with generated input (hypothesis): bank files, event
sidecars, audio file headers and raw PCM. Each either loads or raises kws's own error
type (:class:`kws.errors.KwsError`), never anything else; plus the messages for a
corrupt model file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kws.audio import load_audio, pcm16_to_float
from kws.bank import Keyword, KeywordBank
from kws.embedder import Embedder
from kws.errors import AudioError, BankError, CheckpointError, KwsError
from kws.feedback import clip_windows
from kws.sources import file_source, pcm_source

SR = 16000
DIM = 4
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _valid_bank() -> dict:
    bank = KeywordBank("m", DIM)
    c = np.eye(2, DIM, dtype=np.float32)
    bank.add(Keyword("up", c, 0.5, 2, info={"calibration": {"target_far": 0.01}}, positives=c))
    return bank.to_json()


def _paths(obj, prefix=()):  # type: ignore[no-untyped-def]
    """Every path to a value inside nested dicts and lists."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


BANK_PATHS = list(_paths(_valid_bank()))[1:]


def _replace(obj, path, value):  # type: ignore[no-untyped-def]
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _loads_or_bank_error(path: Path) -> None:
    try:
        bank = KeywordBank.load(path)
    except BankError:
        return
    # What loads is usable: it scores, and saves to a file that loads the same.
    assert bank.score(np.eye(1, bank.dim, dtype=np.float32)).shape == (1, len(bank))


@FAST
@given(where=st.sampled_from(BANK_PATHS), value=json_values)
def test_a_bank_with_any_value_anywhere_loads_or_gives_a_bank_error(tmp_path, where, value) -> None:
    d = _valid_bank()
    _replace(d, where, value)
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(d))
    _loads_or_bank_error(path)


@FAST
@given(data=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_as_a_bank_load_or_give_a_bank_error(tmp_path, data: bytes) -> None:
    path = tmp_path / "bank.json"
    path.write_bytes(data)
    _loads_or_bank_error(path)


class TinyEmbedder(Embedder):
    """A cheap stand-in: energy of four quarter-window slices, normalised."""

    window_samples = SR // 4
    dim = DIM
    model_id = "m"

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        e = (batch.reshape(len(batch), DIM, -1) ** 2).sum(axis=2) + 1e-6
        return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def event_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("event") / "clip.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(SR).astype(np.float32), SR, subtype="PCM_16")
    return path


SIDECAR = {"format": "kws-event", "keyword": "up", "threshold": 0.5, "window_start_s": 0.25, "window_end_s": 0.5}


@FAST
@given(key=st.sampled_from(sorted(SIDECAR)), value=json_values)
def test_an_event_sidecar_with_any_value_is_used_or_gives_an_audio_error(event_clip: Path, key: str, value) -> None:
    emb = TinyEmbedder()
    keyword = Keyword("up", np.eye(1, DIM, dtype=np.float32), 0.5, 1)
    event_clip.with_suffix(".json").write_text(json.dumps({**SIDECAR, key: value}))
    try:
        windows, _ = clip_windows(emb, keyword, event_clip)
    except AudioError:
        return
    assert windows.shape[1] == DIM and np.all(np.isfinite(windows))


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(800) / 5.0).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = _wav_bytes()


@FAST
@given(edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6), cut=st.integers(0, len(WAV)))
def test_a_damaged_wav_header_loads_or_gives_an_audio_error(tmp_path, edits, cut: int) -> None:
    data = bytearray(WAV)
    for pos, byte in edits:
        data[pos] = byte
    path = tmp_path / "x.wav"
    path.write_bytes(bytes(data[: max(cut, 1)]))
    for read in (load_audio, lambda p: np.concatenate([np.zeros(0, np.float32), *file_source(p)])):
        try:
            x = read(path)
        except AudioError:
            continue
        assert x.dtype == np.float32 and x.ndim == 1 and np.all(np.isfinite(x))


@FAST
@given(
    raw=st.binary(min_size=0, max_size=3000),
    channels=st.integers(1, 3),
    rate=st.sampled_from([8000, 16000, 44100]),
    reads=st.lists(st.integers(1, 700), min_size=1, max_size=20),
)
def test_raw_pcm_in_any_chunking_gives_the_same_audio_or_an_audio_error(raw: bytes, channels: int, rate: int, reads) -> None:
    class Pipe(io.RawIOBase):
        """Returns the next planned number of bytes per read, like a pipe under load."""

        def __init__(self) -> None:
            self.buf, self.i = io.BytesIO(raw), 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.i += 1
            return self.buf.read(min(n, reads[self.i % len(reads)]))

    def decode(stream) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.concatenate([np.zeros(0, np.float32), *pcm_source(stream, rate=rate, channels=channels)])

    try:
        whole = decode(io.BytesIO(raw))
    except AudioError:
        with pytest.raises(AudioError):
            decode(Pipe())
        return
    np.testing.assert_allclose(decode(Pipe()), whole, atol=1e-6)
    if rate == SR:  # no resampling: exactly the whole frames decoded at once
        frames = len(raw) // (2 * channels) * 2 * channels
        np.testing.assert_allclose(whole, pcm16_to_float(raw[:frames], channels), atol=1e-7)


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04" + bytes(100), b"\x80\x04K\x01."])
def test_a_corrupt_model_file_never_suggests_loading_it_unsafely(tmp_path, content: bytes) -> None:
    from kws.embedder import load_embedder

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_embedder(path)
    message = str(info.value)
    assert "not a readable kws checkpoint" in message and "weights_only" not in message
    assert isinstance(info.value, KwsError)
