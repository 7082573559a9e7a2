"""A stream of real voices for choosing a model's stream offset: Speech Commands test speakers.

Only the *choose* half of ``../shared/data/speech_commands_v0.02_test_dev`` is used (the report
half stays unseen). Its speakers are split in two: every third one enrols the keywords (3 clips
of each keyword, from 3 different speakers, as ``kws enroll`` would take them), the others speak
the stream, which ``kws stream-eval`` builds from their clips (keywords among the other command
words) and sweeps the threshold offset over:

    python recipes/speech_embedding/real_stream.py --model speech-embedding --out runs/real_stream_se
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CORPUS = Path("../shared/data/speech_commands_v0.02_test_dev")
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="speech-embedding", help="model name or path (default speech-embedding)")
    ap.add_argument("--out", required=True, help="output folder (speaker lists, bank, report)")
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--keywords", nargs="+", default=["yes", "down", "left", "stop"])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--force", action="store_true", help="enrol keywords whose calibration is hopeless too")
    args = ap.parse_args()

    corpus, out = Path(args.corpus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    choose = sorted(Path(corpus, "choose_speakers.txt").read_text().split())
    enrol, stream = choose[::3], [s for i, s in enumerate(choose) if i % 3]
    (out / "stream_speakers.txt").write_text("\n".join(stream) + "\n")
    bank = out / "bank.json"
    bank.unlink(missing_ok=True)
    kws = [sys.executable, "-m", "kws"]
    for word in args.keywords:
        candidates = [c for speaker in enrol for c in sorted((corpus / word).glob(f"{speaker}_nohash_*.wav"))[:1]]
        clips = [str(c) for c in candidates[:3]]
        spare = [str(c) for c in candidates[3:]]
        while True:
            run = subprocess.run([*kws, "enroll", word, *clips, "--bank", str(bank), "--model", args.model,
                                  *(["--force"] if args.force else [])],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            refused = [c for c in clips if f"{c}: similarity" in run.stderr]
            if run.returncode == 0 or not refused or not spare:
                break
            # As a user would: record that take again (here, another enrolling speaker's clip).
            clips = [c for c in clips if c not in refused] + [spare.pop(0)]
        print(run.stdout + run.stderr, flush=True)
        run.check_returncode()
        print(f"{word}: enrolled from {', '.join(Path(c).name for c in clips)}", flush=True)
    distractors = [w for w in WORDS if w not in args.keywords]
    subprocess.run(
        [*kws, "stream-eval", str(corpus), "--subset", "all", "--speakers", str(out / "stream_speakers.txt"),
         "--bank", str(bank), "--model", args.model, "--distractors", *distractors, "--minutes", str(args.minutes),
         "--out", str(out), "--hops", str(out / "hops.npz"), "--threads", "1"],
        check=True,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
