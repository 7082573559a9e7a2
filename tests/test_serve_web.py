"""The web page's API and WebSocket (token, enrolment, live events, "not the keyword", undo)."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import numpy as np

from kws.audio import float_to_pcm16
from kws.bank import KeywordBank
from kws.data.speech_commands import SpeechCommands
from kws.demo import DEMO_DIR, DISTRACTORS, KEYWORDS
from kws.serve import KwsServer, ServeConfig

TIMEOUT = aiohttp.ClientTimeout(total=60)


def _b64(audio: np.ndarray) -> str:
    return base64.b64encode(float_to_pcm16(audio).tobytes()).decode()


async def _start(onnx_embedder, path) -> KwsServer:
    server = KwsServer(onnx_embedder, path, ServeConfig(wyoming_port=0, web_port=0))
    await server.start()
    return server


def test_token_is_required(onnx_embedder, demo_bank_path):
    async def main():
        server = await _start(onnx_embedder, demo_bank_path)
        base = f"http://127.0.0.1:{server.web_port}"
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                page = await http.get(base + "/")
                script = await http.get(base + "/static/app.js")
                codes = [(await http.get(base + "/api/keywords", headers=h)).status for h in ({}, {"X-Kws-Token": "wrong"})]
                ok = await (await http.get(base + "/api/keywords", headers={"X-Kws-Token": server.token})).json()
                posted = (await http.post(base + "/api/undo", json={"name": KEYWORDS[0]})).status
                try:
                    await http.ws_connect(base + "/api/listen?token=wrong")
                    ws_status = 101
                except aiohttp.WSServerHandshakeError as exc:
                    ws_status = exc.status
            return page.status, script.status, codes, ok, posted, ws_status
        finally:
            await server.close()

    page, script, codes, ok, posted, ws_status = asyncio.run(main())
    assert page == script == 200
    assert codes == [403, 403] and posted == 403 and ws_status == 403
    assert [k["name"] for k in ok["keywords"]] == list(KEYWORDS)


def test_enrol_listen_not_the_keyword_and_undo(onnx_embedder, demo_bank_path, demo_stream, tmp_path):
    path = tmp_path / "bank.json"
    path.write_bytes(demo_bank_path.read_bytes())
    new = DISTRACTORS[:2]
    data = SpeechCommands(DEMO_DIR, subset="testing", words=list(new))
    takes = {w: [_b64(data.audio(int(i))) for i in np.flatnonzero(data.labels == data.classes.index(w))[:3]] for w in new}
    audio, _ = demo_stream

    async def main():
        server = await _start(onnx_embedder, path)
        base = f"http://127.0.0.1:{server.web_port}"
        h = {"X-Kws-Token": server.token}
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT, headers=h) as http:
                # Two browsers enrolling at once: both keywords land in the file.
                # The first as the page does by default (the speech engines' voices too), the second without.
                enrolled = await asyncio.gather(
                    *(http.post(base + "/api/enroll", json={"name": w, "takes": t, **({} if w == new[0] else {"spoken": False})})
                      for w, t in takes.items())
                )  # fmt: skip
                replies = [await r.json() for r in enrolled]
                bad = await http.post(base + "/api/enroll", json={"name": "x", "takes": ["not base64!"]})
                bad_reply = (bad.status, await bad.json())
                bad_spoken = await http.post(base + "/api/enroll", json={"name": "x", "takes": takes[new[1]], "spoken": "yes"})
                assert bad_spoken.status == 400 and "spoken is true or false" in (await bad_spoken.json())["error"]
                ws = await http.ws_connect(f"{base}/api/listen?token={server.token}")
                pcm = float_to_pcm16(audio).tobytes()
                for i in range(0, len(pcm), 3200):
                    await ws.send_bytes(pcm[i : i + 3200])
                events, clips, scores = [], set(), 0
                while not (events and events[0]["id"] in clips and scores):
                    msg = await ws.receive_json(timeout=30)
                    if msg["type"] == "event":
                        events.append(msg)
                    elif msg["type"] == "clip":
                        clips.add(msg["id"])
                    elif msg["type"] == "scores":
                        scores += 1
                await ws.close()
                first = events[0]
                negative = await (await http.post(base + "/api/feedback", json={"event": first["id"]})).json()
                after_negative = KeywordBank.load(path)[first["keyword"]]
                undone = await (await http.post(base + "/api/undo", json={"name": first["keyword"]})).json()
                gone = await http.post(base + "/api/feedback", json={"event": 10**6})
            return replies, bad_reply, first, scores, negative, after_negative, undone, gone.status
        finally:
            await server.close()

    replies, bad_reply, first, scores, negative, after_negative, undone, gone = asyncio.run(main())
    assert {r.get("name") for r in replies} == set(new), replies
    assert KeywordBank.load(path).names[:3] == list(KEYWORDS) and set(new) <= set(KeywordBank.load(path).names)
    saved = KeywordBank.load(path)
    assert saved[new[0]].spoken is not None and saved[new[0]].info["spoken"]["text"] == new[0]
    assert saved[new[1]].spoken is None
    assert bad_reply[0] == 400 and "base64" in bad_reply[1]["error"]
    # The stream holds the two new keywords too (among the demo's distractor words).
    assert first["keyword"] in (*KEYWORDS, *new) and scores > 0
    assert negative["name"] == first["keyword"] and [e.kind for e in after_negative.history] == ["negative"]
    assert undone == {"name": first["keyword"], "undone": negative["entry"], "kind": "negative"}
    assert KeywordBank.load(path)[first["keyword"]].history == []
    assert gone == 400


def test_a_new_bank_starts_empty_and_the_page_enrols_into_it(onnx_embedder, tmp_path):
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    path = tmp_path / "new.json"
    data = SpeechCommands(DEMO_DIR, subset="testing", words=[DISTRACTORS[0]])
    takes = [_b64(data.audio(i)) for i in range(3)]

    async def main():
        server = await _start(onnx_embedder, path)
        base = f"http://127.0.0.1:{server.web_port}"
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT, headers={"X-Kws-Token": server.token}) as http:
                before = await (await http.get(base + "/api/keywords")).json()
                ws = await http.ws_connect(f"{base}/api/listen?token={server.token}")
                closed = await ws.receive(timeout=10)
                await (await http.post(base + "/api/enroll", json={"name": DISTRACTORS[0], "takes": takes})).json()
            client = AsyncTcpClient("127.0.0.1", server.wyoming_port)
            await client.connect()
            await client.write_event(Describe().event())
            info = Info.from_event(await client.read_event())
            await client.disconnect()
            return before, closed, info
        finally:
            await server.close()

    before, closed, info = asyncio.run(main())
    assert before == {"keywords": []}
    assert closed.type == aiohttp.WSMsgType.CLOSE and "no keywords" in closed.extra
    assert KeywordBank.load(path).names == [DISTRACTORS[0]]
    assert [m.name for m in info.wake[0].models] == [DISTRACTORS[0]]
