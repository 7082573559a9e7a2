"""``kws bench serve``: N real-time streams through the Wyoming port of one ``kws serve`` process.

The server runs in its own process (its CPU time and memory are its own); this
process plays N Home Assistant clients, each sending a different stream of the
bundled demo words (keywords among other words over noise) in 100 ms chunks,
each chunk when its last sample would have been recorded. Per N it prints:

* CPU use of the server process (100% = one core);
* event latency: when a detection arrived, minus when the end of the window that
  fired was sent (median and p99);
* missed deadlines: hops the server scored more than one hop after their audio
  arrived (counted by the server).

N is *held in real time* when under 1% of hops miss their deadline and the p99
event latency is at most :data:`TARGETS` ``latency_p99_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "serve"
HELP = "kws serve: N real-time Wyoming streams in one process (CPU, event latency, missed deadlines; --soak)"
TARGETS = {"latency_p99_ms": 300.0, "streams": 20}
CHUNK_S = 0.1
LATE_SHARE = 0.01

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kws.bench._machine import add_load_argument
    from kws.cli._common import add_model_arguments

    add_model_arguments(parser, streaming=True)
    add_load_argument(parser)
    parser.add_argument("--streams", default="1,5,10,20,30", metavar="N,N,...", help="stream counts to try (default 1,5,10,20,30)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream and count (default 20)")
    parser.add_argument("--keywords", type=int, default=10, help="keywords in the bank (default 10)")
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="then run the largest count for MINUTES with streams ending and new ones starting, "
        "and print the server's RSS every minute",
    )


def _bank(embedder, n_keywords: int, path: Path) -> list[str]:
    """Enrol the demo words (3 clips each), then random filler keywords up to ``n_keywords``."""
    from kws.bank import Keyword, KeywordBank
    from kws.data.speech_commands import SpeechCommands
    from kws.demo import DEMO_DIR, DISTRACTORS, KEYWORDS
    from kws.enroll import enroll

    words = list(KEYWORDS) + list(DISTRACTORS)
    data = SpeechCommands(DEMO_DIR, subset="testing", words=words)
    bank = KeywordBank(embedder.model_id, embedder.dim)
    for word in words[:n_keywords]:
        idx = np.flatnonzero(data.labels == data.classes.index(word))[:3]
        bank.add(enroll(embedder, word, [data.audio(int(i)) for i in idx]).keyword)
    rng = np.random.default_rng(0)
    for i in range(len(bank), n_keywords):
        # Costs what a keyword costs to score, never fires.
        center = embedder(rng.standard_normal((1, embedder.window_samples)).astype(np.float32) * 0.1)
        bank.add(Keyword(f"filler{i}", center, threshold=1.5, samples=1))
    bank.save(path)
    return bank.names


def _server_process(conn, model, backend, threads, bank_path) -> None:
    """Child process: a KwsServer on a free loopback port; answers "stats" and "stop" on ``conn``."""
    from kws.embedder import load_embedder
    from kws.serve import KwsServer, ServeConfig, WyomingLimits
    from kws.serve.engine import EngineStats

    async def main() -> None:
        embedder = load_embedder(model, backend=backend, threads=threads)
        server = KwsServer(embedder, bank_path, ServeConfig(wyoming_port=0, web_port=None, limits=WyomingLimits(max_connections=1000)))
        await server.start()
        conn.send(server.wyoming_port)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) != "stop":
            conn.send(server.engine.stats.to_json())
            server.engine.stats = EngineStats()
        await server.close()

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())


async def _client(port: int, pcm: bytes, start: float, latencies: list[float]) -> int:
    """One Home Assistant-like client streaming ``pcm`` (16 kHz mono) in real time from ``start``; returns detections."""
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.wake import Detect, Detection

    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    detections = 0

    async def receive() -> None:
        nonlocal detections
        while (ev := await client.read_event()) is not None:
            if Detection.is_type(ev.type):
                detections += 1
                sent = start + Detection.from_event(ev).timestamp / 1000
                latencies.append(time.monotonic() - sent)

    receiver = asyncio.create_task(receive())
    await client.write_event(Detect().event())
    await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
    step = int(2 * 16000 * CHUNK_S)
    for k, i in enumerate(range(0, len(pcm), step)):
        # A live microphone: a chunk leaves when its last sample has been recorded.
        await asyncio.sleep(max(0.0, start + (k + 1) * CHUNK_S - time.monotonic()))
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + step]).event())
    await client.write_event(AudioStop().event())
    await asyncio.sleep(1.0)  # detections of the last hops
    receiver.cancel()
    await client.disconnect()
    return detections


async def _streams(port: int, pcms: list[bytes], latencies: list[float], until: float | None = None) -> int:
    """Run one client per stream, starts spread over one chunk; with ``until``, each restarts until then."""
    base = time.monotonic() + 0.2

    async def one(i: int, pcm: bytes) -> int:
        start, total = base + i * CHUNK_S / len(pcms), 0
        while True:
            total += await _client(port, pcm, start, latencies)
            if until is None or time.monotonic() + len(pcm) / 32000 > until:
                return total
            start = time.monotonic()

    return sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(pcms))))


def run(args: argparse.Namespace) -> dict:
    from kws.bench._machine import busy_cores

    with busy_cores(args.load):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    from kws.audio import float_to_pcm16
    from kws.bench._machine import cpu_seconds, rss_mb
    from kws.demo import DEMO_DIR, DISTRACTORS, KEYWORDS
    from kws.cli._common import embedder_from_args
    from kws.errors import KwsError
    from kws.onnx_runtime import OnnxEmbedder
    from kws.streams import build_stream

    counts = sorted({int(n) for n in args.streams.split(",")})
    if not counts or counts[0] < 1:
        raise KwsError(f"--streams takes positive counts separated by commas, got {args.streams!r}")
    embedder = embedder_from_args(args)
    backend = "onnx" if isinstance(embedder, OnnxEmbedder) else "torch"
    tmp = tempfile.TemporaryDirectory(prefix="kws-bench-serve-")
    bank_path = Path(tmp.name) / "bank.json"
    names = _bank(embedder, args.keywords, bank_path)
    pcms = [
        float_to_pcm16(build_stream(DEMO_DIR, list(KEYWORDS), list(DISTRACTORS), args.seconds, seed=i)[0]).tobytes()
        for i in range(max(counts))
    ]

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_process, args=(child, args.model, backend, args.threads, bank_path), daemon=True)
    proc.start()
    figures: dict = {"model_id": embedder.model_id, "keywords": len(names), "threads": args.threads, "load": args.load, "runs": []}
    try:
        if not parent.poll(120):
            raise KwsError("the server process did not start within 120 s")
        port = parent.recv()
        print(f"kws serve in process {proc.pid}, {len(names)} keywords, {args.seconds:g} s per stream, "
              f"{args.threads} thread(s), {args.load} core(s) kept busy")
        print(f"{'streams':>8} {'CPU %':>7} {'lat p50':>8} {'lat p99':>8} {'late hops':>14} {'events':>7} {'batch':>6}")
        for n in counts:
            latencies: list[float] = []
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            events = asyncio.run(_streams(port, pcms[:n], latencies))
            cpu, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
            parent.send("stats")
            stats = parent.recv()
            lat = np.asarray(latencies) * 1000 if latencies else np.full(1, np.nan)
            r = {
                "streams": n,
                "cpu_percent": 100 * cpu / wall,
                "latency_p50_ms": float(np.median(lat)),
                "latency_p99_ms": float(np.percentile(lat, 99)),
                "events": events,
                **stats,
            }
            r["realtime"] = r["late_hops"] <= LATE_SHARE * max(r["hops"], 1) and r["latency_p99_ms"] <= TARGETS["latency_p99_ms"]
            figures["runs"].append(r)
            late = f"{r['late_hops']}/{r['hops']}"
            print(f"{n:>8} {r['cpu_percent']:>7.0f} {r['latency_p50_ms']:>7.0f}ms {r['latency_p99_ms']:>7.0f}ms "
                  f"{late:>14} {events:>7} {r['embedded'] / max(r['batches'], 1):>6.1f}", flush=True)
        held = [r["streams"] for r in figures["runs"] if r["realtime"]]
        figures["max_realtime_streams"] = max(held) if held else 0
        print(f"largest count held in real time (<= {100 * LATE_SHARE:g}% late hops, p99 latency <= "
              f"{TARGETS['latency_p99_ms']:g} ms): {figures['max_realtime_streams']}   target >= {TARGETS['streams']}   "
              f"ratio {figures['max_realtime_streams'] / TARGETS['streams']:.2f}")
        if args.soak > 0:
            n = counts[-1]
            rss = [rss_mb(proc.pid)]

            async def soak() -> int:
                until = time.monotonic() + 60 * args.soak
                streams = asyncio.ensure_future(_streams(port, pcms[:n], [], until=until))
                while not streams.done():
                    await asyncio.wait([streams], timeout=60)
                    rss.append(rss_mb(proc.pid))
                return streams.result()

            events = asyncio.run(soak())
            parent.send("stats")
            stats = parent.recv()
            figures["soak"] = {"minutes": args.soak, "streams": n, "rss_mb_per_minute": [round(r, 1) for r in rss], "events": events, **stats}
            print(f"soak: {args.soak:g} min, {n} streams coming and going, server RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB "
                  f"({rss[-1] - rss[0]:+.1f} MB; per minute {figures['soak']['rss_mb_per_minute']}), "
                  f"{stats['late_hops']}/{stats['hops']} late hops")
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
        tmp.cleanup()
    return figures
