// The kws page: keywords, enrolment by voice, live scores and events, "not the keyword".
"use strict";

const RATE = 16000;
const TAKE_SECONDS = 1.5;
const TAKES = 3;
const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

let audio = null;        // {ctx, node, stream}
let socket = null;       // live WebSocket
let outgoing = [];       // Float32Array blocks not yet sent
let recording = null;    // Float32Array blocks of the take being recorded
let takes = [];          // base64 16-bit PCM

async function api(path, body) {
  const opts = { headers: { "X-Kws-Token": token } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data;
  try { data = JSON.parse(text); } catch { data = { error: text }; }
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function toPcm16(blocks) {
  const n = blocks.reduce((a, b) => a + b.length, 0);
  const out = new Int16Array(n);
  let i = 0;
  for (const b of blocks) for (const v of b) out[i++] = Math.max(-32768, Math.min(32767, Math.round(v * 32768)));
  return out;
}

function base64(int16) {
  const bytes = new Uint8Array(int16.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function refreshKeywords() {
  const { keywords } = await api("/api/keywords");
  const body = $("keywords").querySelector("tbody");
  body.replaceChildren();
  for (const kw of keywords) {
    const tr = document.createElement("tr");
    for (const v of [kw.name, kw.threshold.toFixed(3), kw.samples, kw.feedback]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    const td = document.createElement("td");
    if (kw.feedback > 0) {
      const b = document.createElement("button");
      b.textContent = "undo last feedback";
      b.className = "undo";
      b.dataset.keyword = kw.name;
      b.onclick = () => change(() => api("/api/undo", { name: kw.name }), `undid the last feedback of ${kw.name}`);
      td.append(b);
    }
    tr.append(td);
    body.append(tr);
  }
}

// A bank change: show the outcome, refresh the list, restart the live stream so it hears the new bank.
async function change(call, message) {
  try {
    const r = await call();
    $("enroll-result").className = "";
    $("enroll-result").textContent = typeof message === "function" ? message(r) : message;
  } catch (e) {
    $("enroll-result").className = "error";
    $("enroll-result").textContent = e.message;
    return;
  }
  await refreshKeywords();
  if (socket) { socket.close(); openSocket(); }
}

function onBlock(block) {
  let sum = 0;
  for (const v of block) sum += v * v;
  const db = 10 * Math.log10(sum / block.length + 1e-12);
  $("level").value = Math.max(-80, db);
  $("level-text").textContent = `${Math.round(db)} dBFS`;
  if (recording) recording.push(block);
  if (socket && socket.readyState === WebSocket.OPEN) {
    outgoing.push(block);
    if (outgoing.reduce((a, b) => a + b.length, 0) >= RATE / 10) {
      socket.send(toPcm16(outgoing).buffer);
      outgoing = [];
    }
  }
}

async function startAudio() {
  if (audio) return;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext({ sampleRate: RATE });
  await ctx.audioWorklet.addModule("/static/worklet.js");
  const node = new AudioWorkletNode(ctx, "kws-capture");
  node.port.onmessage = (e) => onBlock(e.data);
  ctx.createMediaStreamSource(stream).connect(node);
  audio = { ctx, node, stream };
  $("take").disabled = false;
}

function openSocket() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${proto}//${location.host}/api/listen?token=${encodeURIComponent(token)}`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { $("status").textContent = "listening"; };
  socket.onclose = (e) => { $("status").textContent = e.reason ? `stopped: ${e.reason}` : "not listening"; };
  socket.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "scores") showScores(msg.scores);
    else if (msg.type === "event") showEvent(msg);
    else if (msg.type === "clip") {
      const b = document.querySelector(`#events button[data-event="${msg.id}"]`);
      if (b) b.disabled = false;
    }
  };
}

function showScores(scores) {
  const box = $("scores");
  for (const [name, value] of Object.entries(scores)) {
    let row = box.querySelector(`[data-keyword="${CSS.escape(name)}"]`);
    if (!row) {
      row = document.createElement("div");
      row.className = "bar";
      row.dataset.keyword = name;
      row.innerHTML = "<span></span><meter min='0' max='1'></meter>";
      row.querySelector("span").textContent = name;
      box.append(row);
    }
    row.querySelector("meter").value = value === null ? 0 : Math.max(0, value);
  }
}

function showEvent(ev) {
  const li = document.createElement("li");
  li.dataset.keyword = ev.keyword;
  li.textContent = `${ev.time.toFixed(1)} s  ${ev.keyword}  (score ${ev.score.toFixed(3)}) `;
  const b = document.createElement("button");
  b.textContent = "not the keyword";
  b.className = "negative";
  b.dataset.event = ev.id;
  b.disabled = true;  // until the audio after the event has arrived
  b.onclick = () => {
    b.disabled = true;
    change(() => api("/api/feedback", { event: ev.id }),
      (r) => `${r.name}: threshold ${r.threshold_before.toFixed(3)} → ${r.threshold_after.toFixed(3)} (undo in the keyword list)`);
  };
  li.append(b);
  $("events").prepend(li);
}

$("listen").onclick = async () => {
  try {
    await startAudio();
  } catch (e) {
    $("status").textContent = `no microphone: ${e.message}`;
    return;
  }
  if (socket) { socket.close(); socket = null; $("listen").textContent = "Start listening"; return; }
  openSocket();
  $("listen").textContent = "Stop listening";
};

$("take").onclick = async () => {
  recording = [];
  $("take").disabled = true;
  $("takes").textContent = "recording… say the word";
  await new Promise((r) => setTimeout(r, TAKE_SECONDS * 1000));
  takes.push(base64(toPcm16(recording)));
  recording = null;
  $("takes").textContent = `${takes.length} take(s) recorded`;
  $("take").textContent = `Record take ${Math.min(takes.length + 1, TAKES)} of ${TAKES}`;
  $("take").disabled = takes.length >= TAKES;
  $("enroll").disabled = takes.length < TAKES;
};

$("enroll").onclick = async () => {
  const name = $("name").value.trim();
  $("enroll").disabled = true;
  await change(() => api("/api/enroll", { name, takes, spoken: $("spoken").checked }), (r) =>
    `enrolled ${r.name} (threshold ${r.threshold.toFixed(3)})` + (r.warnings.length ? `; warning: ${r.warnings.join("; ")}` : ""));
  takes = [];
  $("takes").textContent = "";
  $("take").textContent = `Record take 1 of ${TAKES}`;
  $("take").disabled = !audio;
};

refreshKeywords().catch((e) => { $("status").textContent = e.message; });
