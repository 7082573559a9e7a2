"""Streams of real voices for choosing a model's stream offset, with `kws enroll` and `kws stream-eval`.

Two kinds, neither touching the report half of the Speech Commands test speakers:

* ``--kind speech-commands``: the *choose* half of ``../shared/data/speech_commands_v0.02_test_dev``,
  split in two: every third speaker enrols the keywords (3 clips of each, from 3 different
  speakers), the others speak the stream (keywords among the other command words).
  Keywords: yes, down, left, stop.
* ``--kind own-voice``: each held-out speaker of the real-speech pack's DSPSpeech-20 part
  (students who said 20 words 10 times each on web recorders; never trained on) enrols
  the keywords with 3 of their own takes and speaks a 3-minute stream of their other
  takes among their 16 other words (English and Mandarin). Keywords: open, close,
  speaker, project (speech, process, print among the distractors). This is how kws is
  meant to be used: a person teaches it their own word.

A take ``kws enroll`` refuses or warns about (a bad take, clipping) is replaced by the next
one, as a user would record it again. Prints the sweep of the threshold offset (recall,
false alarms per hour) and writes ``sweep.json`` in ``--out``:

    python recipes/speech_embedding/real_stream.py --kind own-voice --model speech-embedding --out runs/own_voice_se
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SC = Path("../shared/data/speech_commands_v0.02_test_dev")
PACK = Path("../shared/data/real_speech_train")
SC_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KEYWORDS = {"speech-commands": ["yes", "down", "left", "stop"], "own-voice": ["open", "close", "speaker", "project"]}
KWS = [sys.executable, "-m", "kws"]


def enrol(bank: Path, word: str, takes: list[str], args: argparse.Namespace) -> list[str]:
    """Enrol ``word`` from the first 3 of ``takes``, replacing a take that kws flags by the next; the takes used."""
    clips, spare = takes[:3], takes[3:]
    options = [*(["--force"] if args.force else []), "--spoken" if args.spoken else "--no-spoken"]
    while True:
        run = subprocess.run([*KWS, "enroll", word, *clips, "--bank", str(bank), "--model", args.model, "--replace",
                              *options], capture_output=True, text=True, check=False)  # fmt: skip
        flagged = [c for c in clips if f"{c}: " in run.stdout + run.stderr]
        if not flagged or not spare:
            break
        clips = [c for c in clips if c not in flagged]
        clips += [spare.pop(0) for _ in range(min(3 - len(clips), len(spare)))]
    print(run.stdout + run.stderr, flush=True)
    run.check_returncode()
    print(f"{word}: enrolled from {', '.join(Path(c).name for c in clips)}", flush=True)
    return clips


def stream_eval(corpus: Path, bank: Path, model: str, distractors: list[str], minutes: float, out: Path,
                extra: list[str]) -> dict:  # fmt: skip
    subprocess.run(
        [*KWS, "stream-eval", str(corpus), "--subset", "all", "--bank", str(bank), "--model", model,
         "--distractors", *distractors, "--minutes", str(minutes), "--out", str(out), "--hops", str(out / "hops.npz"),
         "--threads", "1", *extra],
        check=True,
    )  # fmt: skip
    return json.loads((out / "stream_eval.json").read_text())


def speech_commands(args: argparse.Namespace, out: Path) -> list[dict]:
    choose = sorted((SC / "choose_speakers.txt").read_text().split())
    enrolling, streaming = choose[::3], [s for i, s in enumerate(choose) if i % 3]
    (out / "stream_speakers.txt").write_text("\n".join(streaming) + "\n")
    bank = out / "bank.json"
    bank.unlink(missing_ok=True)
    for word in KEYWORDS[args.kind]:
        takes = [str(c) for s in enrolling for c in sorted((SC / word).glob(f"{s}_nohash_*.wav"))[:1]]
        enrol(bank, word, takes, args)
    distractors = [w for w in SC_WORDS if w not in KEYWORDS[args.kind]]
    return [stream_eval(SC, bank, args.model, distractors, 20.0, out, ["--speakers", str(out / "stream_speakers.txt")])]


def own_voice(args: argparse.Namespace, out: Path) -> list[dict]:
    from kws.audio import load_audio, write_audio
    from kws.data.real_pack import read_pack

    clips = [c for c in read_pack(PACK, "heldout") if c.source == "dspspeech20"]
    reports = []
    for speaker in sorted({c.speaker for c in clips}):
        mine = sorted((c for c in clips if c.speaker == speaker), key=lambda c: str(c.path))
        folder = out / speaker
        corpus, bank = folder / "corpus", folder / "bank.json"
        bank.unlink(missing_ok=True)
        enrolled = set()
        for word in KEYWORDS[args.kind]:
            enrolled |= set(enrol(bank, word, [str(c.path) for c in mine if c.word == word], args))
        for c in mine:  # the speaker's other takes, as a Speech Commands-layout corpus for the stream
            if str(c.path) not in enrolled:
                path = corpus / c.word / f"{speaker}_nohash_{c.path.stem.rsplit('_', 1)[-1]}.wav"
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_audio(path, load_audio(c.path))
        distractors = sorted({c.word for c in mine} - set(KEYWORDS[args.kind]))
        reports.append(stream_eval(corpus, bank, args.model, distractors, 3.0, folder, []))
    return reports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=sorted(KEYWORDS), required=True)
    ap.add_argument("--model", default="speech-embedding", help="model name or path (default speech-embedding)")
    ap.add_argument("--out", required=True, help="output folder (banks, streams, reports)")
    ap.add_argument("--force", action="store_true", help="enrol keywords whose calibration is hopeless too")
    ap.add_argument("--spoken", action="store_true",
                    help="enrol with the engines' voices too (kws enroll's default); without it --no-spoken")  # fmt: skip
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = speech_commands(args, out) if args.kind == "speech-commands" else own_voice(args, out)
    # All streams together: hits and false alarms summed over them.
    hours = sum(r["duration_s"] for r in reports) / 3600
    occurrences = sum(r["keyword_occurrences"] for r in reports)
    sweep = []
    for i, point in enumerate(reports[0]["points"]):
        hits = sum(r["points"][i]["recall"] * r["keyword_occurrences"] for r in reports)
        alarms = sum(r["points"][i]["false_alarms"] for r in reports)
        sweep.append({"offset": point["offset"], "recall": hits / occurrences, "fa_per_hour": alarms / hours})
    (out / "sweep.json").write_text(json.dumps({"kind": args.kind, "model": args.model, "hours": hours,
                                                "occurrences": occurrences, "sweep": sweep}, indent=1))  # fmt: skip
    print(f"\n{args.kind}, {args.model}: {len(reports)} stream(s), {60 * hours:.1f} min, {occurrences} keywords")
    print(f"{'offset':>7}  {'recall':>6}  {'FA/h':>7}")
    for p in sweep:
        print(f"{p['offset']:>+7.2f}  {p['recall']:>6.3f}  {p['fa_per_hour']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
