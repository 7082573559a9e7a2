"""The web page of ``kws serve``: keywords, enrolment by voice, live detection, feedback.

Plain files in ``static/`` (no build step, nothing from a CDN) and a small JSON
API on aiohttp. The browser records with getUserMedia and an AudioWorklet at
16 kHz and sends 16-bit PCM over a WebSocket; that stream runs in the same
:class:`~kws.serve.engine.BatchEngine` as the Wyoming streams.

Every API call and the WebSocket need the process's token (``?token=`` in the
page's address, sent back as the ``X-Kws-Token`` header or the WebSocket's
``token`` query parameter): another page open in the same browser cannot read
it, so it cannot drive the service even on loopback. Bank changes (enrol,
feedback, undo) are serialised by one lock and written atomically, so two
browsers enrolling at once both land in the file.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from aiohttp import WSMsgType, web

from kws.audio import SAMPLE_RATE, pcm16_to_float
from kws.bank import KeywordBank
from kws.events import EventClipConfig
from kws.enroll import MAX_CLIPS, enroll
from kws.errors import KwsError
from kws.scoring import fire_threshold
from kws.serve.engine import BankStore, BatchEngine, Stream
from kws.spoken import SPOKEN_DEFAULT

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "X-Kws-Token"


@dataclass(frozen=True)
class WebLimits:
    """What the page's clients may send.

    Attributes:
        max_request_bytes: one API request (three 3 s takes in base64 fit).
        max_ws_message_bytes: one WebSocket audio message.
        max_take_s: one enrolment take.
        max_streams: live WebSocket streams open at once.
        kept_events: event clips kept for "not the keyword" (the oldest go first).
    """

    max_request_bytes: int = 1024 * 1024
    max_ws_message_bytes: int = 64 * 1024
    max_take_s: float = 3.0
    max_streams: int = 8
    kept_events: int = 100


class _History:
    """The last seconds of a stream's 16 kHz audio, addressed by stream time."""

    def __init__(self, seconds: float) -> None:
        self.size = int(seconds * SAMPLE_RATE)
        self.buf = np.zeros(0, dtype=np.float32)
        self.end = 0  # stream sample index just after the last one held

    def push(self, x: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, x])[-self.size :]
        self.end += len(x)

    def clip(self, start: int, stop: int) -> np.ndarray:
        lo = max(start, self.end - len(self.buf))
        return self.buf[lo - (self.end - len(self.buf)) : stop - (self.end - len(self.buf))].copy()


class WebApp:
    """The page and its API, sharing the engine and the bank with the Wyoming service."""

    def __init__(self, engine: BatchEngine, store: BankStore, token: str, limits: WebLimits = WebLimits()) -> None:
        self.engine, self.store, self.token, self.limits = engine, store, token, limits
        self.clip_cfg = EventClipConfig()
        self.bank_lock = asyncio.Lock()
        self.event_clips: collections.OrderedDict[int, tuple[str, np.ndarray]] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self.streams: set[web.WebSocketResponse] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_request_bytes, middlewares=[self._errors])
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/api/keywords", self._guard(self._keywords))
        app.router.add_post("/api/enroll", self._guard(self._enroll))
        app.router.add_post("/api/feedback", self._guard(self._feedback))
        app.router.add_post("/api/undo", self._guard(self._undo))
        app.router.add_get("/api/listen", self._listen)
        return app

    # ------------------------------------------------------------------ plumbing

    def _token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._token_ok(request.headers.get(TOKEN_HEADER)):
                raise web.HTTPForbidden(text="missing or wrong token: open the address kws serve printed")
            return await handler(request)

        return guarded

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except KwsError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise KwsError(f"the request is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise KwsError("the request must be a JSON object")
        return body

    async def _change_bank(self, change: Callable[[KeywordBank], Any]) -> Any:
        """Apply ``change`` to the bank as it is on disk now, and write it back atomically, one change at a time."""
        loop = asyncio.get_running_loop()

        def apply() -> Any:
            bank = self.store.load()
            result = change(bank)
            bank.save(self.store.path)
            return result

        async with self.bank_lock:
            return await loop.run_in_executor(None, apply)

    # ------------------------------------------------------------------ pages and API

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def _keywords(self, request: web.Request) -> web.Response:
        bank = self.store.current()
        return web.json_response(
            {
                "keywords": [
                    {
                        "name": kw.name,
                        "threshold": round(float(fire_threshold(kw.threshold, self.engine.cfg.threshold_offset)), 4),
                        "samples": kw.samples,
                        "negatives": sum(e.kind == "negative" for e in kw.history),
                        "feedback": len(kw.history),
                    }
                    for kw in bank.keywords.values()
                ]
            }
        )

    async def _enroll(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        name, takes = str(body.get("name", "")).strip(), body.get("takes")
        if not name or len(name) > 64:
            raise KwsError("give the keyword a name of 1 to 64 characters")
        if not isinstance(takes, list) or not 1 <= len(takes) <= MAX_CLIPS:
            raise KwsError(f"send 1 to {MAX_CLIPS} takes")
        clips = []
        for i, t in enumerate(takes):
            try:
                pcm = base64.b64decode(str(t), validate=True)
            except ValueError as exc:
                raise KwsError(f"take {i + 1} is not base64 16-bit PCM") from exc
            clip = pcm16_to_float(pcm)
            if not 0.2 * SAMPLE_RATE <= len(clip) <= self.limits.max_take_s * SAMPLE_RATE:
                raise KwsError(f"take {i + 1} lasts {len(clip) / SAMPLE_RATE:.2f} s; record 0.2 to {self.limits.max_take_s:g} s")
            clips.append(clip)
        replace = bool(body.get("replace", False))
        spoken = body.get("spoken", True)
        if not isinstance(spoken, bool):
            raise KwsError("spoken is true or false (also hear the keyword as the speech engines say it)")

        def change(bank: KeywordBank) -> dict:
            if name in bank and not replace:
                raise KwsError(f"{name!r} is already enrolled; remove it first or enrol with replace")
            result = enroll(self.engine.embedder, name, clips, bank=bank, clip_names=[f"take {i + 1}" for i in range(len(clips))],
                            spoken=SPOKEN_DEFAULT if spoken else None)  # fmt: skip
            bank.add(result.keyword, replace=replace)
            return {"name": name, "threshold": round(result.threshold, 4), "warnings": result.warnings}

        return web.json_response(await self._change_bank(change))

    async def _feedback(self, request: web.Request) -> web.Response:
        from kws.feedback import add_negative

        body = await self._json(request)
        try:
            name, clip = self.event_clips[int(body.get("event"))]
        except (KeyError, TypeError, ValueError) as exc:
            raise KwsError("no such event (it is too old, or from before a restart)") from exc

        def change(bank: KeywordBank) -> dict:
            res = add_negative(self.engine.embedder, bank, name, clip, source=f"web event {body['event']}")
            return {"name": name, "entry": res.entry.id, "threshold_before": res.threshold_before, "threshold_after": res.threshold_after}

        return web.json_response(await self._change_bank(change))

    async def _undo(self, request: web.Request) -> web.Response:
        from kws.feedback import undo

        name = str((await self._json(request)).get("name", ""))

        def change(bank: KeywordBank) -> dict:
            entry = undo(bank, name)
            return {"name": name, "undone": entry.id, "kind": entry.kind}

        return web.json_response(await self._change_bank(change))

    # ------------------------------------------------------------------ live stream

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request.query.get("token")):
            raise web.HTTPForbidden(text="missing or wrong token")
        if len(self.streams) >= self.limits.max_streams:
            raise web.HTTPServiceUnavailable(text=f"{self.limits.max_streams} live streams are open already")
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_ws_message_bytes, heartbeat=30)
        await ws.prepare(request)
        try:
            stream = self.engine.open(self.store.select(None), SAMPLE_RATE, 1)
        except KwsError as exc:
            await ws.close(code=1011, message=str(exc).encode()[:120])
            return ws
        self.streams.add(ws)
        cfg = self.clip_cfg
        longest = max(self.engine.embedder.at_frames(f).window_samples for f in stream.bank.windows)
        history = _History((longest + 2 * SAMPLE_RATE) / SAMPLE_RATE + (cfg.preroll_ms + cfg.postroll_ms) / 1000)
        sender = asyncio.create_task(self._send(ws, stream, history))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY or len(msg.data) % 2:
                    await ws.close(code=1003, message=b"send 16-bit mono PCM at 16 kHz as binary messages")
                    break
                samples = pcm16_to_float(msg.data)
                history.push(samples)
                stream.feed(msg.data)
                await stream.wait_room()
        except KwsError as exc:
            await ws.close(code=1003, message=str(exc).encode()[:120])
        finally:
            sender.cancel()
            self.engine.close(stream)
            self.streams.discard(ws)
        return ws

    async def _send(self, ws: web.WebSocketResponse, stream: Stream, history: _History) -> None:
        """Events as they fire (their clips kept for feedback once the post-roll has arrived) and scores.

        The page meters the input level itself, from the microphone's samples.
        """
        cfg = self.clip_cfg
        pending: list[tuple[int, Any]] = []
        try:
            while not ws.closed:
                try:
                    ev = await asyncio.wait_for(stream.events.get(), 0.2)
                except asyncio.TimeoutError:
                    ev = None
                if ev is not None:
                    event_id = next(self._ids)
                    pending.append((event_id, ev))
                    await ws.send_json({"type": "event", "id": event_id, **ev.to_json()})
                for item in list(pending):
                    event_id, e = item
                    end = round(e.time * SAMPLE_RATE)
                    stop = end + round(cfg.postroll_ms * SAMPLE_RATE / 1000)
                    if history.end >= stop:
                        # A keyword longer than the model's window fired on a window of its own.
                        fired = self.engine.embedder.at_frames(stream.bank[e.keyword].frames).window_samples
                        start = end - fired - round(cfg.preroll_ms * SAMPLE_RATE / 1000)
                        self.event_clips[event_id] = (e.keyword, history.clip(max(start, 0), stop))
                        while len(self.event_clips) > self.limits.kept_events:
                            self.event_clips.popitem(last=False)
                        pending.remove(item)
                        await ws.send_json({"type": "clip", "id": event_id})
                if stream.last_scores is not None:
                    t, scores = stream.last_scores
                    names = stream.bank.names
                    values = [None] * len(names) if scores is None else [round(float(v), 3) for v in scores]
                    await ws.send_json({"type": "scores", "time": round(t, 2), "scores": dict(zip(names, values))})
        except (ConnectionError, RuntimeError) as exc:
            log.info("web client went away: %s", exc)
