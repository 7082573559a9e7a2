"""Training throughput (clips/s) of the default recipe's step on the current device.

Times the same step the trainer runs — augmentation, log-mel, SpecAugment,
encoder (bf16 autocast on CUDA), joint loss, backward, AdamW — on random
waveforms, after a few warm-up steps. Content does not change the cost.

``--config FILE`` of a head over a pretrained stem (``model.stem``) times what that
recipe's run spends its time on instead: turning each source's clips (each synthetic
corpus, the real-speech pack) into cached stem frames, in clips per second per source
with the config's copies and augmentation, and the head's training step.

``--loss NAME`` (repeatable, or ``all``) also times the step with that metric
loss in place of the default's (the other terms unchanged) and prints each
one's ms/step relative to the default step, and the time of the loss terms
alone (forward and backward on fixed embeddings). Those comparisons use the
fastest of the timed steps, the figure other work on a busy machine disturbs least.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

NAME = "train"
HELP = "training throughput in clips/s (default encoder and losses; bf16 on CUDA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults come from the training config, read in run() (importing it here would import torch).
    parser.add_argument("--size", help="model size preset (default: model.size of the training config)")
    parser.add_argument("--p", type=int, help="classes per batch (default: train.p)")
    parser.add_argument("--k", type=int, help="clips per class (default: train.k)")
    parser.add_argument("--classes", type=int, default=3000, help="classes of the classifier head and centers")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--config", metavar="FILE",
                        help="a recipe config of a head over a stem: clips/s per data source and of the head's step")
    parser.add_argument("--clips", type=int, default=128, help="with --config: clips timed per source (default: 128)")
    parser.add_argument("--loss", action="append", default=[], metavar="NAME",
                        help="also time this metric loss against the default (repeatable; 'all': every one)")  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    import numpy as np
    import torch

    from kws.data.augment import Augmenter
    from kws.errors import KwsError
    from kws.features import SpecAugment
    from kws.losses import METRIC_LOSSES
    from kws.model import KeywordModel, count_parameters
    from kws.train import TrainStep, build_loss, make_optimizer, model_config, optimize
    from kws.train_config import LossConfig, ModelSection, TrainConfig

    if args.config:
        return _run_stem_sources(args)
    defaults = TrainConfig()
    args.size = defaults.model.size if args.size is None else args.size
    args.p = defaults.train.p if args.p is None else args.p
    args.k = defaults.train.k if args.k is None else args.k
    if args.p < 2 or args.k < 2 or args.steps < 1 or args.warmup < 0 or args.classes < args.p:
        raise KwsError("need --p >= 2, --k >= 2, --steps >= 1, --warmup >= 0 and --classes >= --p")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KwsError("--device cuda: no CUDA device is available")
    names = list(METRIC_LOSSES) if "all" in args.loss else list(dict.fromkeys(args.loss))
    unknown = [n for n in names if n not in METRIC_LOSSES]
    if unknown:
        raise KwsError(f"--loss {', '.join(unknown)}: unknown; choose from {', '.join(METRIC_LOSSES)} or all")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and not args.no_bf16
    torch.manual_seed(0)
    model = KeywordModel(model_config(ModelSection(size=args.size))).to(device)
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(16000 * 10).astype(np.float32) * 0.1]
    augmenter = Augmenter(defaults.augment, noise).to(device).train()
    batch = args.p * args.k
    wave = torch.randn(batch, model.cfg.window_samples, device=device) * 0.1
    labels = torch.arange(args.p, device=device).repeat_interleave(args.k)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn: Any) -> list[float]:
        """Seconds of each of ``args.steps`` calls of ``fn``, after ``args.warmup`` untimed ones."""
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return times

    def time_steps(loss_cfg: LossConfig) -> tuple[list[float], float]:
        """Seconds of each training step, and the fastest loss computation alone, with the losses of ``loss_cfg``."""
        loss = build_loss(loss_cfg, model.dim, args.classes).to(device)
        step = TrainStep(model, SpecAugment(defaults.specaugment, model.frontend.cfg), loss, bf16).train()
        optimizer = make_optimizer(list(model.parameters()) + list(loss.parameters()), defaults.optim)

        def one_step() -> None:
            with torch.no_grad():
                x = augmenter(wave)
            optimize(step, optimizer, x, labels, defaults.optim.grad_clip)

        emb = torch.nn.functional.normalize(torch.randn(batch, model.dim, device=device), dim=1).requires_grad_()
        return timed(one_step), min(timed(lambda: loss(emb, labels)[0].backward()))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times, loss_s = time_steps(defaults.loss)
    elapsed = sum(step_times)
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
    if names:
        base = 1000 * min(step_times)
        per_loss = {}
        header = f"{'metric loss':<18} {'ms/step':>9} {'vs default':>10} {'loss ms':>9}"
        print(f"\n{header}  (fastest of {args.steps} steps)")
        print(f"{'default (' + defaults.loss.metric + ')':<18} {base:9.1f} {1.0:10.2f} {1000 * loss_s:9.2f}")
        for name in names:
            step_times, loss_s = time_steps(dataclasses.replace(defaults.loss, metric=name))
            ms = 1000 * min(step_times)
            per_loss[name] = {"ms_per_step": ms, "relative": ms / base, "loss_ms": 1000 * loss_s}
            print(f"{name:<18} {ms:9.1f} {ms / base:10.2f} {1000 * loss_s:9.2f}")
        figures["losses"] = per_loss
    return figures


def _run_stem_sources(args: argparse.Namespace) -> dict:
    """Clips/s of each source's stem-frame caching and of the head's training step, for ``args.config``."""
    import numpy as np
    import torch

    from kws.data.real_pack import noise_files, read_pack
    from kws.data.speech_commands import SpeechCommands
    from kws.errors import ConfigError, KwsError
    from kws.model import HeadModel, ModelConfig
    from kws.train import build_loss, make_optimizer
    from kws.train_config import load_config, resolve_words
    from kws.train_head import head_config, stem_frames

    cfg = load_config(args.config)
    if cfg.model.stem == "scratch":
        raise ConfigError(f"{args.config}: not a head over a stem; leave out --config to time the scratch step")
    if args.clips < 1 or args.steps < 1:
        raise KwsError("need --clips >= 1 and --steps >= 1")
    words, heldout = resolve_words(cfg.data)
    def sample(clips: list) -> list[str]:
        return [str(clips[i].path) for i in np.random.default_rng(0).permutation(len(clips))[: args.clips]]

    sources: dict[str, list[str]] = {}
    for root in [cfg.data.root, *cfg.data.extra_roots] if cfg.data.root else cfg.data.extra_roots:
        sources[root] = sample(SpeechCommands(root, "training", words=words, heldout_words=heldout).clips)
    if cfg.data.real_pack:
        sources[cfg.data.real_pack] = sample(read_pack(cfg.data.real_pack, "training", cfg.data.real_heldout_fraction))
    noise = [str(p) for p in noise_files(cfg.data.real_pack)] if cfg.data.real_pack else []
    head = head_config(cfg)
    figures: dict[str, Any] = {"copies": cfg.data.copies, "conditions": cfg.data.conditions, "sources": {}}
    print(f"stem frames ({cfg.data.copies} copies a clip, conditions {'on' if cfg.data.conditions else 'off'}, "
          f"2 worker processes), {args.clips} clips a source:")  # fmt: skip
    for name, paths in sources.items():
        t0 = time.perf_counter()
        stem_frames(paths, head.frames, cfg.data.copies, noise_paths=noise, context=cfg.data.context,
                    conditions=cfg.data.conditions, progress=False)  # fmt: skip
        rate = len(paths) / (time.perf_counter() - t0)
        figures["sources"][name] = {"clips": len(paths), "clips_per_s": rate}
        print(f"  {name:<48} {rate:8.1f} clips/s")
    torch.manual_seed(0)
    model = HeadModel(ModelConfig(stem=cfg.model.stem, head=head))
    loss = build_loss(cfg.loss, model.dim, max(cfg.train.p, args.classes))
    opt = make_optimizer(list(model.parameters()) + list(loss.parameters()), cfg.optim)
    batch = cfg.train.p * cfg.train.k
    x = torch.randn(batch, head.frames, 96)
    labels = torch.arange(cfg.train.p).repeat_interleave(cfg.train.k)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        total, _ = loss(model.head(x), labels)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    figures["head_step_ms"] = 1000 * float(np.median(times))
    figures["head_clips_per_s"] = batch / float(np.median(times))
    print(f"head step (batch {batch}, {torch.get_num_threads()} threads): {figures['head_step_ms']:.1f} ms, "
          f"{figures['head_clips_per_s']:.0f} clips/s")  # fmt: skip
    return figures
