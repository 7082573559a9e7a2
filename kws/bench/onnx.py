"""``kws bench onnx``: PyTorch eager vs ONNX Runtime fp32 vs int8 — latency, size, memory, accuracy.

Exports the model (fp32 and int8) into a temporary folder with the same checks
as ``kws export``, then measures on one thread, side by side in one process:

- per-window latency (batch 1, one 1 s window) of each backend, with ratios;
- model file sizes;
- the peak RSS of a separate process that runs streaming detection on the ONNX
  model without torch (torch imports are blocked there, and counted);
- optionally (``--fewshot DIR``) 10-way 3-shot accuracy across speakers of each
  backend on a Speech Commands-layout folder, to check int8 against fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

NAME = "onnx"
HELP = "PyTorch eager vs ONNX Runtime fp32 vs int8: latency, size, RSS without torch, few-shot accuracy"

# Run in a fresh interpreter: streaming detection on an .onnx model with torch
# blocked, then its peak RSS. argv: model, seconds of audio. VmHWM, not ru_maxrss:
# Linux carries ru_maxrss over exec, so it would report the (torch-laden) parent's peak.
RSS_SCRIPT = """
import json, sys
attempts = []
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            attempts.append(name)
            raise ImportError("torch is blocked in this measurement")
sys.meta_path.insert(0, BlockTorch())
import numpy as np
import kws
from kws.bank import Keyword, KeywordBank
from kws.detect import Detector, DetectorConfig
emb = kws.load_embedder(sys.argv[1], threads=1)
rng = np.random.default_rng(0)
bank = KeywordBank(emb.model_id, emb.dim)
for i, c in enumerate(emb(0.1 * rng.standard_normal((3, emb.window_samples)).astype(np.float32))):
    bank.add(Keyword(f"kw{i}", c[None], threshold=0.99, samples=1))
det = Detector(emb, bank, DetectorConfig(vad=False))
stream = (0.05 * rng.standard_normal(int(float(sys.argv[2]) * emb.sample_rate))).astype(np.float32)
for start in range(0, len(stream), 1600):
    det.process(stream[start : start + 1600])
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "hops": det.stats.embedded, "torch_import_attempts": attempts}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH", help="scratch checkpoint to compare (default: the bundled scratch model)")
    parser.add_argument("--clips", metavar="DIR", help="speech clips for parity and int8 calibration (default: espeak-ng)")
    parser.add_argument("--repeats", type=int, default=300, metavar="N", help="timed windows per backend (default: 300)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="intra-op threads (default: 1)")
    parser.add_argument("--rss-seconds", type=float, default=20.0, metavar="S", help="audio streamed in the RSS run")
    parser.add_argument(
        "--fewshot",
        metavar="DIR",
        help="Speech Commands-layout folder: also report 10-way 3-shot accuracy across speakers per backend",
    )
    parser.add_argument("--per-word", type=int, default=40, metavar="N", help="clips per word for --fewshot")
    parser.add_argument("--keep", metavar="DIR", help="keep the exported models in DIR instead of a temporary folder")


def time_per_window(embed: Callable[[np.ndarray], np.ndarray], window: np.ndarray, repeats: int) -> dict[str, float]:
    """Median and 90th-percentile milliseconds of ``embed(window)`` for a ``(1, samples)`` window."""
    for _ in range(max(10, repeats // 10)):
        embed(window)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        embed(window)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


def onnx_process_rss(model: Path, seconds: float) -> dict:
    """Peak RSS of a torch-free process streaming ``seconds`` of audio through a Detector on ``model``."""
    from kws.errors import KwsError

    proc = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(model), str(seconds)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise KwsError(f"the ONNX-only detection process failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fewshot_by_backend(embedders: dict, folder: Path, per_word: int) -> dict[str, dict[str, float]]:
    """10-way 3-shot accuracy across speakers of each embedder on the word folders of ``folder``."""
    from kws.audio import load_audio
    from kws.data.speech_commands import speaker_of
    from kws.errors import KwsError
    from kws.metrics import few_shot_accuracy

    words = sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("_"))
    files = [(w.name, f) for w in words for f in sorted(w.glob("*.wav"))[:per_word]]
    if not files:
        raise KwsError(f"{folder}: no <word>/*.wav clips for the few-shot check")
    audio = [load_audio(f) for _, f in files]
    labels = np.array([w for w, _ in files])
    speakers = np.array([speaker_of(f.name) for _, f in files])
    out = {}
    for name, emb in embedders.items():
        r = few_shot_accuracy(emb(audio), labels, n_way=10, k_shot=3, episodes=300, speakers=speakers)
        out[name] = {"accuracy": r.mean, "ci95": r.ci95}
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from kws.embedder import BUNDLED, TorchEmbedder
    from kws.export import clips_from_folder, export_onnx, int8_path, load_source_model, quantize_int8, synthetic_clips
    from kws.onnx_runtime import OnnxEmbedder

    checkpoint = args.checkpoint or BUNDLED["scratch"][0]
    model = load_source_model(checkpoint)
    window = model.cfg.window_samples
    clips = clips_from_folder(args.clips, 64, window) if args.clips else synthetic_clips(window=window)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        fp32_path = folder / "model.onnx"
        parity = export_onnx(model, fp32_path, clips)
        quant = quantize_int8(fp32_path, int8_path(fp32_path), clips)
        threads_before = torch.get_num_threads()
        embedders = {
            "torch": TorchEmbedder(model, threads=args.threads),
            "onnx_fp32": OnnxEmbedder(fp32_path, threads=args.threads),
            "onnx_int8": OnnxEmbedder(int8_path(fp32_path), threads=args.threads),
        }
        try:
            one = clips[:1]
            latency = {name: time_per_window(emb, one, args.repeats) for name, emb in embedders.items()}
            accuracy = fewshot_by_backend(embedders, Path(args.fewshot), args.per_word) if args.fewshot else None
        finally:
            torch.set_num_threads(threads_before)
        sizes = {
            "checkpoint": Path(checkpoint).stat().st_size,
            "onnx_fp32": fp32_path.stat().st_size,
            "onnx_int8": int8_path(fp32_path).stat().st_size,
        }
        rss = {q: onnx_process_rss(p, args.rss_seconds) for q, p in (("fp32", fp32_path), ("int8", int8_path(fp32_path)))}

    base = latency["torch"]["median_ms"]
    figures = {
        "model_id": model.model_id(),
        "threads": args.threads,
        "latency_ms": latency,
        "speedup_vs_torch": {k: base / v["median_ms"] for k, v in latency.items()},
        "size_bytes": sizes,
        "parity_max_abs_diff": parity.max_abs_diff,
        "int8_cosine_to_fp32": {"min": quant.min_cosine, "mean": quant.mean_cosine},
        "onnx_only_process": rss,
        "fewshot_10way_3shot": accuracy,
    }
    _print_report(figures)
    return figures


def _print_report(f: dict) -> None:
    print(f"model {f['model_id']}, {f['threads']} thread(s), one 1 s window per call")
    print(f"{'backend':<10} {'median ms':>10} {'p90 ms':>8} {'speed-up':>9} {'size MB':>8}")
    size_key = {"torch": "checkpoint", "onnx_fp32": "onnx_fp32", "onnx_int8": "onnx_int8"}
    for name, lat in f["latency_ms"].items():
        print(
            f"{name:<10} {lat['median_ms']:>10.3f} {lat['p90_ms']:>8.3f} {f['speedup_vs_torch'][name]:>8.2f}x "
            f"{f['size_bytes'][size_key[name]] / 1e6:>8.2f}"
        )
    print(
        f"fp32 parity (max abs diff vs torch): {f['parity_max_abs_diff']:.1e}; "
        f"int8 cosine to fp32: min {f['int8_cosine_to_fp32']['min']:.4f}, mean {f['int8_cosine_to_fp32']['mean']:.4f}"
    )
    for q, r in f["onnx_only_process"].items():
        print(
            f"ONNX-only detection process ({q}): peak RSS {r['peak_rss_mb']:.0f} MB over {r['hops']} hops, "
            f"torch import attempts: {len(r['torch_import_attempts'])}"
        )
    if f["fewshot_10way_3shot"]:
        for name, r in f["fewshot_10way_3shot"].items():
            print(f"10-way 3-shot accuracy ({name}): {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} %")
