"""Training throughput (clips/s) of the default recipe's step on the current device.

Times the same step the trainer runs — augmentation, log-mel, SpecAugment,
encoder (bf16 autocast on CUDA), joint loss, backward, AdamW — on random
waveforms, after a few warm-up steps. Content does not change the cost.
"""

from __future__ import annotations

import argparse
import time

NAME = "train"
HELP = "training throughput in clips/s (default encoder and losses; bf16 on CUDA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="small", help="model size preset (default: small)")
    parser.add_argument("--p", type=int, default=32, help="classes per batch (default: 32)")
    parser.add_argument("--k", type=int, default=4, help="clips per class (default: 4)")
    parser.add_argument("--classes", type=int, default=3000, help="classes of the classifier head and centers")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CUDA too")


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from kws.data.augment import Augmenter
    from kws.errors import KwsError
    from kws.features import SpecAugment
    from kws.model import KeywordModel, count_parameters
    from kws.train import ModelSection, TrainConfig, TrainStep, build_loss, make_optimizer, model_config, optimize

    if args.p < 2 or args.k < 2 or args.steps < 1 or args.warmup < 0 or args.classes < args.p:
        raise KwsError("need --p >= 2, --k >= 2, --steps >= 1, --warmup >= 0 and --classes >= --p")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KwsError("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and not args.no_bf16
    defaults = TrainConfig()
    torch.manual_seed(0)
    model = KeywordModel(model_config(ModelSection(args.size, defaults.model.embedding_dim))).to(device)
    loss = build_loss(defaults.loss, model.dim, args.classes).to(device)
    step = TrainStep(model, SpecAugment(defaults.specaugment), loss, bf16).train()
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(16000 * 10).astype(np.float32) * 0.1]
    augmenter = Augmenter(defaults.augment, noise).to(device).train()
    optimizer = make_optimizer(list(model.parameters()) + list(loss.parameters()), defaults.optim)
    batch = args.p * args.k
    wave = torch.randn(batch, model.cfg.window_samples, device=device) * 0.1
    labels = torch.arange(args.p, device=device).repeat_interleave(args.k)

    def one_step() -> None:
        with torch.no_grad():
            x = augmenter(wave)
        optimize(step, optimizer, x, labels, defaults.optim.grad_clip)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        one_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    sync()
    elapsed = time.perf_counter() - t0
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "size": args.size,
        "parameters": count_parameters(model),
        "batch": batch,
        "bf16": bf16,
        "steps": args.steps,
        "ms_per_step": 1000 * elapsed / args.steps,
        "clips_per_s": batch * args.steps / elapsed,
    }
    if device.type == "cuda":
        figures["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return figures
