"""``kws serve``: the batch engine against the detector, and the Wyoming service as Home Assistant uses it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from wyoming.wake import Detect, Detection

from kws.audio import SAMPLE_RATE, float_to_pcm16, resample
from kws.bank import KeywordBank
from kws.demo import DEMO_DIR, DISTRACTORS, KEYWORDS
from kws.detect import Detector, DetectorConfig
from kws.serve import BatchEngine, KwsServer, ServeConfig, WyomingLimits
from kws.streams import build_stream

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def silence_stream() -> np.ndarray:
    """8 s of distractor words only: no keyword."""
    audio, _ = build_stream(DEMO_DIR, list(DISTRACTORS), [], 8.0, seed=4)
    return audio


def _detector_events(onnx_embedder, demo_bank_path, audio):
    det = Detector(onnx_embedder, KeywordBank.load(demo_bank_path), DetectorConfig())
    return [(e.keyword, round(e.time, 3)) for e in det.process(audio)]


def engine_events(engine: BatchEngine, bank: KeywordBank, audio: np.ndarray, pause: float = 0.0) -> list[tuple[str, float]]:
    """The events ``(keyword, time to the ms)`` of one stream of ``audio`` (16 kHz) through ``engine``,
    fed in 100 ms chunks with ``pause`` seconds between them."""

    async def main():
        task = asyncio.create_task(engine.run())
        stream = engine.open(bank, SAMPLE_RATE, 1)
        pcm = float_to_pcm16(audio).tobytes()
        for i in range(0, len(pcm), 3200):
            stream.feed(pcm[i : i + 3200])
            await asyncio.sleep(pause)
        await stream.drained()
        task.cancel()
        events = []
        while not stream.events.empty():
            e = stream.events.get_nowait()
            events.append((e.keyword, round(e.time, 3)))
        return events

    return asyncio.run(main())


@pytest.fixture(scope="module")
def scratch_onnx(tmp_path_factory):
    """The scratch model on ONNX Runtime (whole windows, embedded in batches) and the demo's bank for it."""
    from kws.demo import run_demo
    from kws.embedder import load_embedder

    embedder = load_embedder("scratch", backend="onnx", threads=1)
    path = tmp_path_factory.mktemp("scratch") / "bank.json"
    run_demo(embedder, bank_path=path, minutes=0.1)
    return embedder, path


@pytest.mark.parametrize("model", ["default", "scratch"])
def test_batched_streams_give_the_detectors_events(model, request, demo_stream):
    """Three streams at once through one engine: each gets exactly what its own Detector finds,
    with the default model's incremental stem frames and with the scratch model's batched windows."""
    if model == "default":
        onnx_embedder, demo_bank_path = request.getfixturevalue("onnx_embedder"), request.getfixturevalue("demo_bank_path")
    else:
        onnx_embedder, demo_bank_path = request.getfixturevalue("scratch_onnx")
    audio, truth = demo_stream
    want = _detector_events(onnx_embedder, demo_bank_path, audio)
    # Enough events for the comparison to mean something (both models find all 5 keywords of
    # this stream, said by the speaker who enrolled them).
    assert len(want) >= 0.8 * len(truth) and want, (want, truth)

    async def main():
        engine = BatchEngine(onnx_embedder)
        task = asyncio.create_task(engine.run())
        bank = KeywordBank.load(demo_bank_path)
        streams = [engine.open(bank, SAMPLE_RATE, 1) for _ in range(3)]
        pcm = float_to_pcm16(audio).tobytes()
        step = 2 * 1600
        for i in range(0, len(pcm), step):
            for s in streams:
                s.feed(pcm[i : i + step])
            await asyncio.sleep(0)
        for s in streams:
            await s.drained()
        task.cancel()
        got = []
        for s in streams:
            events = []
            while not s.events.empty():
                e = s.events.get_nowait()
                events.append((e.keyword, round(e.time, 3)))
            got.append(events)
        return got, engine.stats

    got, stats = asyncio.run(main())
    assert all(g == want for g in got), (got, want)
    # Batching: fewer ticks (one model call each for whole windows) than embedded windows.
    assert stats.batches < stats.embedded / 2, stats.to_json()


def test_a_stream_state_moves_on_through_hops_the_energy_gate_skips(onnx_embedder, demo_bank_path, demo_stream):
    """Ticks whose hops are all below the energy gate (a silence) still move the default model's
    incremental stem state, as the detector does: the events after the silence stay the same."""
    audio, _ = demo_stream
    audio = np.concatenate([audio[: 8 * SAMPLE_RATE], np.zeros(int(2.5 * SAMPLE_RATE), np.float32), audio[8 * SAMPLE_RATE :]])
    want = _detector_events(onnx_embedder, demo_bank_path, audio)

    engine = BatchEngine(onnx_embedder)
    assert engine.incremental
    # A tick or so per hop: the silence's ticks hold gated hops only.
    got = engine_events(engine, KeywordBank.load(demo_bank_path), audio, pause=0.002)
    assert any(t > 10.5 for _, t in want), want  # some events come after the silence
    assert got == want


async def _serve(onnx_embedder, demo_bank_path, cfg: ServeConfig | None = None) -> KwsServer:
    server = KwsServer(onnx_embedder, demo_bank_path, cfg or ServeConfig(wyoming_port=0, web_port=None))
    await server.start()
    return server


async def _client(server: KwsServer) -> AsyncTcpClient:
    client = AsyncTcpClient("127.0.0.1", server.wyoming_port, read_timeout=TIMEOUT)
    await client.connect()
    return client


def test_wyoming_describe_detect_and_not_detected(onnx_embedder, demo_bank_path, demo_stream, silence_stream):
    audio, _ = demo_stream
    want = _detector_events(onnx_embedder, demo_bank_path, audio)

    async def main():
        server = await _serve(onnx_embedder, demo_bank_path)
        try:
            client = await _client(server)
            await client.write_event(Describe().event())
            info = Info.from_event(await client.read_event())
            names = [m.name for m in info.wake[0].models]
            # Two clients at once: 44.1 kHz stereo, and 16 kHz mono with one keyword selected.
            other = await _client(server)
            both = await asyncio.gather(
                _collect(client, audio, 44100, 2, None, len(want)),
                _collect(other, audio, SAMPLE_RATE, 1, [KEYWORDS[0]], sum(k == KEYWORDS[0] for k, _ in want)),
            )
            quiet = await _collect(client, silence_stream, SAMPLE_RATE, 1, None, 0)
            await client.disconnect()
            await other.disconnect()
            return names, both, quiet
        finally:
            await server.close()

    names, (all_kw, first_only), quiet = asyncio.run(main())
    assert names == list(KEYWORDS)
    got = [(d.name, d.timestamp / 1000) for d in all_kw]
    assert [k for k, _ in got] == [k for k, _ in want]
    # Resampled 44.1 kHz stereo fires within one hop of the 16 kHz detector.
    assert all(abs(t - tw) <= 0.1 + 1e-6 for (_, t), (_, tw) in zip(got, want)), (got, want)
    assert [(d.name, d.timestamp / 1000) for d in first_only] == [w for w in want if w[0] == KEYWORDS[0]]
    assert quiet == "not-detected"


async def _collect(client, audio, rate, channels, names, n_detections):
    """Stream ``audio``; returns the detections (when ``n_detections`` > 0) or the type of the final event."""
    if rate != SAMPLE_RATE:
        audio = resample(audio, SAMPLE_RATE, rate)
    pcm = np.repeat(float_to_pcm16(audio)[:, None], channels, axis=1).tobytes()
    await client.write_event(Detect(names=names).event())
    await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
    step = 2 * channels * rate // 10
    for i in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=rate, width=2, channels=channels, audio=pcm[i : i + step]).event())
    await client.write_event(AudioStop().event())
    if n_detections == 0:
        ev = await client.read_event()
        return ev.type
    detections = []
    while len(detections) < n_detections:
        ev = await client.read_event()
        assert ev is not None and Detection.is_type(ev.type), ev
        detections.append(Detection.from_event(ev))
    return detections


async def _raw(server: KwsServer, data: bytes, close: bool = False) -> list[dict]:
    """Send raw bytes; returns the JSON headers the server answers with before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.wyoming_port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.close()
        return []
    answers = []
    while line := await asyncio.wait_for(reader.readline(), TIMEOUT):
        header = json.loads(line)
        if header.get("data_length"):
            header["data"] = json.loads(await reader.readexactly(header["data_length"]))
        answers.append(header)
    writer.close()
    return answers


def _header(type_: str, data: dict | None = None, payload_length: int = 0) -> bytes:
    h = {"type": type_, "data": data or {}}
    if payload_length:
        h["payload_length"] = payload_length
    return json.dumps(h).encode() + b"\n"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"this is not json\n", "malformed event header"),
        (b'["a list"]\n', "malformed event header"),
        (_header("audio-start", {"rate": 16000, "width": 4, "channels": 1}), "sample width 4"),
        (_header("audio-start", {"rate": 12345, "width": 2, "channels": 1}), "sample rate 12345"),
        (_header("audio-start", {"rate": 16000, "width": 2}), "needs integer rate, width and channels"),
        (_header("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}, payload_length=10**9), "payload of 1000000000 bytes"),
        (b"x" * (70 * 1024) + b"\n", "header longer than"),
        (_header("detect", {"names": KEYWORDS[0]}), "must be a list"),
        (_header("detect", {"names": ["nothing-like-it"]}) + _header("audio-start", {"rate": 16000, "width": 2, "channels": 1}), "none of the keywords"),
        (
            _header("audio-start", {"rate": 16000, "width": 2, "channels": 1})
            + _header("audio-chunk", {"rate": 8000, "width": 2, "channels": 1}, payload_length=2) + b"\0\0",
            "format differs",
        ),
        (_header("audio-start", {"rate": 16000, "width": 2, "channels": 2}) + _header("audio-chunk", {"rate": 16000, "width": 2, "channels": 2}, payload_length=3) + b"\0\0\0", "not a multiple of 4 bytes"),
    ],
)
def test_bad_input_gets_an_error_and_the_others_are_still_served(onnx_embedder, demo_bank_path, data, message):
    async def main():
        server = await _serve(onnx_embedder, demo_bank_path)
        try:
            bystander = await _client(server)
            answers = await _raw(server, data)
            # A client that disconnects in the middle of a chunk.
            await _raw(server, _header("audio-start", {"rate": 16000, "width": 2, "channels": 1})
                       + _header("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}, payload_length=3200) + b"\0" * 100, close=True)
            await bystander.write_event(Describe().event())
            info = Info.from_event(await bystander.read_event())
            await bystander.disconnect()
            await asyncio.sleep(0.05)
            return answers, info, len(server.engine.streams)
        finally:
            await server.close()

    answers, info, open_streams = asyncio.run(main())
    assert [a["type"] for a in answers] == ["error"], answers
    assert message in answers[0]["data"]["text"]
    assert [m.name for m in info.wake[0].models] == list(KEYWORDS)
    assert open_streams == 0


def test_connection_limit_and_bank_changes_reach_new_streams(onnx_embedder, demo_bank_path, tmp_path):
    path = tmp_path / "bank.json"
    path.write_bytes(demo_bank_path.read_bytes())

    async def main():
        cfg = ServeConfig(wyoming_port=0, web_port=None, limits=WyomingLimits(max_connections=1))
        server = await _serve(onnx_embedder, path, cfg)
        try:
            first = await _client(server)
            await first.write_event(Describe().event())
            before = [m.name for m in Info.from_event(await first.read_event()).wake[0].models]
            refused = await _raw(server, _header("describe"))
            bank = KeywordBank.load(path)
            bank.remove(KEYWORDS[-1])
            bank.save(path)
            await first.write_event(Describe().event())
            after = [m.name for m in Info.from_event(await first.read_event()).wake[0].models]
            await first.disconnect()
            return before, refused, after
        finally:
            await server.close()

    before, refused, after = asyncio.run(main())
    assert before == list(KEYWORDS) and after == list(KEYWORDS[:-1])
    assert [a["type"] for a in refused] == ["error"] and "too many connections" in refused[0]["data"]["text"]


def test_cli_serve_refuses_another_models_bank_and_a_busy_port(demo_bank_path, tmp_path, capsys):
    import socket

    from kws.cli import main

    (tmp_path / "other.json").write_text('{"format": "kws-bank", "version": 3, "model_id": "another", "dim": 128, "keywords": {}}')
    assert main(["serve", "--bank", str(tmp_path / "other.json"), "--no-web"]) == 2
    assert "made with model another" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--bank", str(demo_bank_path), "--port", str(port), "--no-web"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_bench_serve_reports_per_stream_count(tmp_path, capsys):
    from kws.cli import main

    out = tmp_path / "serve.json"
    assert main(["bench", "serve", "--streams", "2", "--seconds", "3", "--keywords", "4", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    (run,) = figures["runs"]
    assert figures["keywords"] == 4 and run["streams"] == 2
    # 2 streams x 30 hops, every one scored by the server; CPU measured on the server process.
    assert run["hops"] == 60 and run["cpu_percent"] > 0
    assert figures["max_realtime_streams"] in (0, 2)
    assert "largest count held in real time" in capsys.readouterr().out


def test_busy_cores_keeps_a_core_busy_and_stops():
    import multiprocessing as mp
    import time

    from kws.bench._machine import busy_cores, cpu_seconds

    with busy_cores(1):
        (child,) = mp.active_children()
        time.sleep(0.5)
        used = cpu_seconds(child.pid)
    assert used > 0.1
    assert not child.is_alive()


def test_bank_store_keeps_the_last_good_bank_when_the_file_breaks(onnx_embedder, demo_bank_path, tmp_path):
    from kws.serve import BankStore

    path = tmp_path / "bank.json"
    path.write_bytes(demo_bank_path.read_bytes())
    store = BankStore(path, onnx_embedder.model_id, onnx_embedder.dim)
    assert store.select([KEYWORDS[-1], "nothing"]).names == [KEYWORDS[-1]]
    path.write_text('{"format": "kws-bank", "version": 3, "model_id"')  # half-written by hand
    assert store.current().names == list(KEYWORDS)
    bank = KeywordBank.load(demo_bank_path)
    bank.remove(KEYWORDS[1])
    bank.save(path)
    assert store.current().names == [KEYWORDS[0], KEYWORDS[2]]
