"""The web page in a real headless Chromium with a fake microphone, driven over the DevTools protocol.

The microphone plays a WAV file in a loop: the word "speaker" every 2 s. The bank
starts with "signal", which the scratch model fires on "speaker" (a false alarm; the
default model does not, which is why this page test runs the scratch model). On the page: start
listening, see "signal" fire, press "not the keyword" (the bank gains a negative),
enrol "speaker" from three takes recorded through getUserMedia and the
AudioWorklet, see "speaker" detected, undo the negative.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from kws.audio import write_audio
from kws.bank import KeywordBank
from kws.data.speech_commands import SpeechCommands
from kws.demo import DEMO_DIR
from kws.enroll import enroll
from kws.impostors import load_impostors
from kws.serve import KwsServer, ServeConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PERIOD_S = 2.0
# A take is recorded 1 s after the end of a word: it then spans the next word whole
# (0.5 s of margin on each side for a 2 s period and a 1.5 s take).
RECORD_TAKES = """
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const level = () => document.getElementById("level").value;
  for (let i = 0; i < 3; i++) {
    while (level() < -30) await sleep(5);
    while (level() > -30) await sleep(5);
    while (level() > -45) await sleep(5);
    await sleep(1000);
    document.getElementById("take").click();
    await sleep(1700);
  }
  return document.getElementById("takes").textContent;
})()
"""


class DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate JavaScript in the page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0

    async def js(self, expression: str):
        self.n += 1
        await self.ws.send_json(
            {"id": self.n, "method": "Runtime.evaluate", "params": {"expression": expression, "awaitPromise": True, "returnByValue": True}}
        )
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == self.n:
                result = msg["result"]
                if "exceptionDetails" in result:
                    raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
                return result["result"].get("value")

    async def until(self, expression: str, timeout_s: float = 30.0):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        # What the page showed, to tell a slow page from one that never heard the word.
        shown = await self.js("['status', 'scores', 'events', 'enroll-result'].map(i => i + ': ' + "
                              "document.getElementById(i).textContent.slice(0, 300)).join(' | ')")  # fmt: skip
        raise AssertionError(f"timed out waiting for {expression}; page: {shown}")


@pytest.fixture
def scratch_embedder():
    """The scratch model on ONNX Runtime: it takes "speaker" for "signal", the false alarm the page corrects."""
    from kws.embedder import load_embedder

    return load_embedder("scratch", backend="onnx", threads=1)


@pytest.fixture
def scene(scratch_embedder, tmp_path) -> tuple[Path, Path]:
    """The bank (signal) and the fake microphone's WAV ("speaker" every 2 s over quiet noise)."""
    data = SpeechCommands(DEMO_DIR, subset="testing", words=["signal", "speaker"])
    idx = {w: np.flatnonzero(data.labels == data.classes.index(w)) for w in ("signal", "speaker")}
    bank = KeywordBank(scratch_embedder.model_id, scratch_embedder.dim)
    # Calibrated on the impostor words alone: running speech among them raises its threshold
    # above the false alarm the page is to correct.
    impostors = load_impostors(scratch_embedder, exclude="signal")
    bank.add(enroll(scratch_embedder, "signal", [data.audio(int(i)) for i in idx["signal"][:3]], impostors=impostors).keyword)
    bank.save(tmp_path / "bank.json")
    word = data.audio(int(idx["speaker"][3]))
    period = np.zeros(int(PERIOD_S * 16000), dtype=np.float32)
    period[: len(word)] = word
    noise = 10 ** (-70 / 20) * np.random.default_rng(0).standard_normal(4 * len(period))
    write_audio(tmp_path / "mic.wav", np.tile(period, 4) + noise.astype(np.float32))
    return tmp_path / "bank.json", tmp_path / "mic.wav"


def test_page_in_chromium_enrols_detects_and_takes_feedback(scratch_embedder, scene, tmp_path):
    assert CHROMIUM is not None, "this test needs Debian's chromium: run `make system-deps`"
    demo_bank_path, wav = scene

    async def main():
        server = KwsServer(scratch_embedder, demo_bank_path, ServeConfig(wyoming_port=0, web_port=0))
        await server.start()
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            server.web_url, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            port = None
            while port is None:
                line = (await asyncio.wait_for(browser.stderr.readline(), 30)).decode()
                assert line, "chromium exited before opening the DevTools port"
                if m := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                    port = int(m.group(1))
            async with aiohttp.ClientSession() as http:
                targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
                page = next(t for t in targets if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    return await _drive(DevTools(ws), demo_bank_path)
        finally:
            # SIGTERM lets chromium reap its own helper processes (SIGKILL would leave them to init).
            browser.terminate()
            try:
                await asyncio.wait_for(browser.wait(), 10)
            except asyncio.TimeoutError:
                browser.kill()
                await browser.wait()
            await server.close()

    asyncio.run(main())


async def _drive(page: DevTools, demo_bank_path: Path) -> None:
    await page.until("document.querySelectorAll('#keywords tbody tr').length === 1")
    await page.js("document.getElementById('listen').click()")
    # A false alarm of "signal" on "speaker"; its button is enabled once the audio after it has arrived.
    await page.until("!!document.querySelector('#events li[data-keyword=\"signal\"] button.negative:not([disabled])')")
    await page.js("document.querySelector('#events li[data-keyword=\"signal\"] button.negative:not([disabled])').click()")
    result = await page.until("document.getElementById('enroll-result').textContent")
    assert "signal: threshold" in result, result
    assert [e.kind for e in KeywordBank.load(demo_bank_path)["signal"].history] == ["negative"]

    await page.js("document.getElementById('name').value = 'speaker'")
    assert "3 take(s)" in await page.js(RECORD_TAKES)
    await page.js("document.getElementById('enroll').click()")
    result = await page.until("(t => t.startsWith('enrolled') || t.includes('rror') ? t : '')(document.getElementById('enroll-result').textContent)")
    assert result.startswith("enrolled speaker"), result
    assert KeywordBank.load(demo_bank_path).names == ["signal", "speaker"]
    # The live stream restarts with the new bank and hears the new keyword (a word every 2 s; a
    # loaded machine may take a while to restart the stream).
    await page.until("!!document.querySelector('#events li[data-keyword=\"speaker\"]')", timeout_s=60.0)
    assert await page.js("document.querySelectorAll('#scores .bar').length") == 2

    await page.js("document.querySelector('button.undo[data-keyword=\"signal\"]').click()")
    await page.until("document.getElementById('enroll-result').textContent.startsWith('undid')")
    assert KeywordBank.load(demo_bank_path)["signal"].history == []
