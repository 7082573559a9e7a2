"""The training loop of the scratch encoder: single device, or torchrun + DistributedDataParallel.

:func:`train` reads top to bottom: :func:`build_run` sets a run up (data, model,
loss, optimizer, sampler, resume, DDP), :func:`train_epoch` runs one epoch of
optimizer steps and reduces its loss sums over ranks, and :func:`end_epoch`
measures the embedding space on rank 0 (:func:`evaluate_epoch`), appends the
figures to ``metrics.csv`` / ``metrics.jsonl`` and saves ``last.pt`` (everything
needed to resume) and ``best.pt`` (best held-out few-shot accuracy). The
configuration is :mod:`kws.train_config`; a head over a pretrained stem trains
in :mod:`kws.train_head`.

``data.extra_roots`` (other synthetic corpora, e.g. other speech engines') and ``data.real_pack``
(the pack's training-speaker clips) join ``data.root``'s clips, labels shared by word, each
source weighted in a word's K clips by ``data.weights``; the pack's held-out speakers give a
real-speech curve that chooses ``best.pt``. With ``data.conditions`` half of each batch's clips
are taken from a copy of the training set made through recording conditions when the run starts.
With ``data.teacher`` the encoder also learns to reproduce that model's embeddings of its
training clips (computed once, cached in ``data.cache_dir``), weighted by ``loss.distill``.

An epoch's batches are P×K (:class:`kws.data.sampler.PKSampler`, or
:class:`~kws.data.sampler.HardClassSampler` whose batches gather nearby words)
from the training set held in memory as int16 (on the GPU when there is one),
augmented, turned into log-mel and masked (SpecAugment) on the training device,
encoded, and scored by a :class:`kws.losses.JointLoss`.

Launch several processes with ``torchrun --nproc_per_node=N -m kws train ...``:
the trainer reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment
and uses NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from kws.data.augment import Augmenter
from kws.errors import CheckpointError, ConfigError, DataError, KwsError
from kws.features import SpecAugment
from kws.losses import CenterLoss, ClassifierHead, DistillLoss, JointLoss, build_metric_loss
from kws.model import KeywordModel, ModelConfig, load_checkpoint, preset, save_checkpoint
from kws.train_config import (
    SCHEDULES, EpochEvalConfig, LossConfig, ModelSection, OptimConfig, TrainConfig, kept_speakers, resolve_words,
)  # fmt: skip

__all__ = [
    "train", "build_run", "train_epoch", "end_epoch", "evaluate_epoch", "Run", "EpochStats", "TrainStep",
    "lr_factor", "build_loss", "model_config", "encode", "make_optimizer", "optimize", "embed_audio",
    "write_metrics", "few_shot_figures", "LAST", "BEST", "METRICS_CSV", "METRICS_JSONL",
]  # fmt: skip

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
# With data.conditions, the share of a batch's clips taken from their copy through recording conditions.
CONDITIONED_SHARE = 0.5
METRICS_CSV, METRICS_JSONL = "metrics.csv", "metrics.jsonl"


# ---------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train as configured; returns the last epoch's metrics row (rank 0; other ranks get ``{}``).

    ``resume`` continues from ``out_dir/last.pt``; without it an ``out_dir`` that
    already holds a run is refused. ``on_epoch`` is called on rank 0 with each
    epoch's metrics row.
    """
    cfg.validate()
    if cfg.model.stem != "scratch":
        if resume:
            raise KwsError("a head over a stem trains in minutes from its cache: start it again instead of --resume")
        from kws.train_head import train_head

        return train_head(cfg, progress=progress, on_epoch=on_epoch)
    out_dir = Path(cfg.train.out_dir)
    if not resume and (out_dir / LAST).exists():
        raise KwsError(f"{out_dir} already holds a training run; pass --resume to continue it or choose another --out")
    if resume and not (out_dir / LAST).is_file():
        raise CheckpointError(f"{out_dir / LAST}: nothing to resume (no checkpoint there)")
    dist = _setup(cfg.train.device)
    try:
        run = build_run(cfg, dist, resume, progress)
        row: dict[str, Any] = run.rows[-1] if run.rows else {}
        for epoch in range(run.start_epoch, cfg.train.epochs):
            stats = train_epoch(run, epoch, progress)
            if dist.rank == 0:
                row = end_epoch(run, epoch, stats)
                if on_epoch is not None:
                    on_epoch(row)
            dist.barrier()
        return row if dist.rank == 0 else {}
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


@dataclass
class Run:
    """Everything one training process holds between epochs."""

    cfg: TrainConfig
    dist: _Dist
    bf16: bool
    classes: list[str]
    heldout: list[str]
    audio: torch.Tensor  # int16 (N, samples), on the GPU when data.on_device
    labels: torch.Tensor  # (N,) on the training device
    teacher: torch.Tensor | None  # (N, D_teacher) the teacher's embeddings (zeros: none), on the training device
    unlabelled: torch.Tensor | None  # int16 (M, samples) of data.unlabelled_root; None when train.unlabelled is 0
    conditioned: torch.Tensor | None  # int16 (N, samples): audio through recording conditions (data.conditions)
    eval_data: _EvalSet | None  # rank 0 only
    model: KeywordModel
    loss: JointLoss
    step_module: nn.Module  # TrainStep, wrapped in DDP when distributed
    augmenter: Augmenter
    optimizer: torch.optim.Optimizer
    sampler: Any  # PKSampler or HardClassSampler
    steps_per_epoch: int
    start_epoch: int = 0
    step: int = 0
    best: float = -math.inf
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows so far (rank 0)

    @property
    def hard(self) -> bool:
        from kws.data.sampler import HardClassSampler

        return isinstance(self.sampler, HardClassSampler)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)


@dataclass
class EpochStats:
    """One epoch's loss sums (and classifier hits, last) summed over ranks, and its timing."""

    names: list[str]
    sums: torch.Tensor  # (len(names) + 1,)
    started: float  # time.perf_counter() at the epoch's start
    train_time: float
    sampler_centers: torch.Tensor | None  # (classes, D) given to the hard-class sampler


def build_run(cfg: TrainConfig, dist: _Dist, resume: bool, progress: bool) -> Run:
    """Load the data, build model, loss, optimizer and sampler, restore ``last.pt`` if resuming, wrap DDP."""
    from kws.data.sampler import HardClassSampler, PKSampler
    from kws.data.speech_commands import SpeechCommands, background_noise

    is_main, device = dist.rank == 0, dist.device
    bf16 = cfg.train.bf16 and device.type == "cuda"
    torch.manual_seed(cfg.train.seed)

    teacher_model = _load_teacher(cfg.data.teacher) if cfg.data.teacher else None  # fails before any data is read
    words, heldout = resolve_words(cfg.data)
    train_set = SpeechCommands(cfg.data.root, "training", words=words, heldout_words=heldout)
    extra_sets = [SpeechCommands(root, "training", words=words, heldout_words=heldout) for root in cfg.data.extra_roots]
    for root, extra in zip(cfg.data.extra_roots, extra_sets):
        if len(extra) == 0:
            raise DataError(f"data.extra_roots: {root} has no training clips of the training words")
    # Every source's clips, data.root's first (the epoch evaluation's reference clips index them).
    sources = [_corpus_source(ds, progress and is_main) for ds in [train_set, *extra_sets]]
    n_synthetic = sum(len(s.words) for s in sources)
    if cfg.data.real_pack:
        sources.append(_pack_clips(cfg, "training", heldout, sources[0].audio.shape[1], progress and is_main))
    classes = list(train_set.classes)
    for source in sources[1:]:
        classes += sorted(set(source.words.tolist()) - set(classes))
    index = {w: i for i, w in enumerate(classes)}
    labels_np = np.array([index[w] for s in sources for w in s.words], dtype=np.int64)
    audio_np = np.concatenate([s.audio for s in sources])
    paths, speakers = [p for s in sources for p in s.paths], np.concatenate([s.speakers for s in sources])
    synthetic = np.arange(len(labels_np)) < n_synthetic
    weights = None
    if cfg.data.weights:
        weights = np.concatenate([np.full(len(s.words), w) for s, w in zip(sources, cfg.data.weights)])
    del sources
    if len(classes) < cfg.train.p:
        raise ConfigError(f"train.p={cfg.train.p} exceeds the {len(classes)} training words")
    log.info(
        "rank %d/%d on %s: %d training clips of %d words",
        dist.rank, dist.world_size, device, len(labels_np), len(classes),
    )  # fmt: skip
    teacher = None
    if teacher_model is not None:
        words_np = np.array(classes)[labels_np]
        if not is_main:
            dist.barrier()  # rank 0 fills the cache once; the other ranks then read it
        teacher = torch.from_numpy(_teacher_targets(cfg, teacher_model, audio_np, paths, words_np, speakers, synthetic,
                                                    progress and is_main)).to(device)  # fmt: skip
        if is_main:
            dist.barrier()
    audio = torch.from_numpy(audio_np)
    conditioned = torch.from_numpy(_conditioned(cfg, audio_np, progress and is_main)) if cfg.data.conditions else None
    if cfg.data.on_device and device.type == "cuda":
        audio = audio.to(device)
        conditioned = None if conditioned is None else conditioned.to(device)
    labels = torch.from_numpy(labels_np).to(device)
    unlabelled = _unlabelled_audio(cfg, classes, heldout, progress and is_main)
    if unlabelled is not None and cfg.data.on_device and device.type == "cuda":
        unlabelled = unlabelled.to(device)
    eval_data = _eval_set(cfg, train_set, audio, heldout, progress) if is_main else None

    model = KeywordModel(model_config(cfg.model)).to(device)
    teacher_dim = 0 if teacher is None else teacher.shape[1]
    loss = build_loss(cfg.loss, cfg.model.embedding_dim, len(classes), teacher_dim).to(device)
    step_module: nn.Module = TrainStep(model, SpecAugment(cfg.specaugment, model.frontend.cfg), loss, bf16)
    augmenter = Augmenter(cfg.augment, background_noise(cfg.data.root)).to(device)
    optimizer = make_optimizer(list(model.parameters()) + list(loss.parameters()), cfg.optim)
    sampler_type = HardClassSampler if cfg.train.sampler == "hard_class" else PKSampler
    sampler = sampler_type(labels_np, cfg.train.p, cfg.train.k, cfg.train.seed, dist.rank, dist.world_size, weights)
    run = Run(
        cfg=cfg, dist=dist, bf16=bf16, classes=classes, heldout=heldout, audio=audio, labels=labels,
        teacher=teacher, unlabelled=unlabelled, conditioned=conditioned, eval_data=eval_data, model=model, loss=loss,
        step_module=step_module, augmenter=augmenter, optimizer=optimizer, sampler=sampler,
        steps_per_epoch=cfg.train.steps_per_epoch or len(sampler),
    )  # fmt: skip
    if resume:
        extra = _load_resume(run.out_dir / LAST, model, classes)
        loss.load_state_dict(extra["loss"])
        optimizer.load_state_dict(extra["optimizer"])
        run.start_epoch, run.step, run.best = int(extra["epoch"]), int(extra["step"]), float(extra["best"])
        run.rows = _read_metrics(run.out_dir, run.start_epoch) if is_main else []
        if run.hard and "sampler_centers" in extra:
            sampler.set_centers(extra["sampler_centers"])
        log.info("resuming %s after epoch %d", run.out_dir / LAST, run.start_epoch)
    if dist.enabled:
        run.step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return run


def train_epoch(run: Run, epoch: int, progress: bool) -> EpochStats:
    """One epoch of optimizer steps on this rank; its loss sums reduced over every rank."""
    from tqdm import tqdm

    cfg, dist, device, loss = run.cfg, run.dist, run.dist.device, run.loss
    # Seeded per (epoch, rank): a resumed run draws what an uninterrupted one would.
    torch.manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + dist.rank)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 7919 + epoch * 131 + dist.rank)
    run.step_module.train()
    run.augmenter.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    # Centers for the hard-class sampler: the center loss keeps them, else running means do.
    class_means = _ClassMeans(len(run.classes), run.model.dim, device) if run.hard and "center" not in loss.terms else None
    total_steps = run.steps_per_epoch * cfg.train.epochs
    warmup = round(cfg.optim.warmup_epochs * run.steps_per_epoch)
    t0 = time.perf_counter()
    bar = tqdm(_epoch_batches(run.sampler, epoch, run.steps_per_epoch), total=run.steps_per_epoch,
               desc=f"epoch {epoch + 1}", unit="batch", disable=not (progress and dist.rank == 0), leave=False)  # fmt: skip
    for i, batch in enumerate(bar):
        factor = lr_factor(run.step, total_steps, warmup, cfg.optim.schedule, cfg.optim.min_lr_ratio)
        for group in run.optimizer.param_groups:
            group["lr"] = cfg.optim.lr * factor
        wave, y, targets = _batch(run, batch, gen)
        terms, emb = optimize(run.step_module, run.optimizer, wave, y, cfg.optim.grad_clip, cfg.train.unlabelled,
                              targets)  # fmt: skip
        emb, y = emb[: len(emb) - cfg.train.unlabelled], y[: len(y) - cfg.train.unlabelled]
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value
        if class_means is not None:
            class_means.add(emb, y)
        if "classifier" in loss.terms:
            with torch.no_grad():
                correct += (loss.terms["classifier"].logits(emb).argmax(dim=1) == y).sum()
        run.step += 1
        if (i + 1) % 20 == 0:
            bar.set_postfix(loss=f"{(sums['loss'] / (i + 1)).item():.4f}")
    bar.close()
    # One reduction per epoch: every rank's losses count, not just rank 0's.
    names = sorted(sums)
    stats = torch.stack([torch.as_tensor(sums[n], device=device).float() for n in names] + [correct.float()])
    if dist.enabled:
        torch.distributed.all_reduce(stats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    sampler_centers = None
    if run.hard:
        sampler_centers = _sampler_centers(loss, class_means, dist.enabled)
        run.sampler.set_centers(sampler_centers)
    log.info("rank %d/%d: epoch %d done, %d batches", dist.rank, dist.world_size, epoch + 1, run.steps_per_epoch)
    return EpochStats(names, stats, t0, train_time, sampler_centers)


def end_epoch(run: Run, epoch: int, stats: EpochStats) -> dict[str, Any]:
    """Rank 0 after an epoch: its metrics row (evaluated when due), the metrics files, ``last.pt`` and ``best.pt``."""
    cfg, loss = run.cfg, run.loss
    n_batches = run.steps_per_epoch * run.dist.world_size
    clips = n_batches * cfg.train.p * cfg.train.k
    row: dict[str, Any] = {"epoch": epoch + 1, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"]}
    for n, v in zip(stats.names, stats.sums.tolist()):
        row["loss" if n == "loss" else f"loss_{n}"] = v / n_batches
    if "classifier" in loss.terms:
        row["train_acc"] = stats.sums[-1].item() / clips
    t1 = time.perf_counter()
    if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs:
        row.update(evaluate_epoch(run.model, run.eval_data, cfg.eval, run.dist.device, run.bf16))
    row.update(
        train_time_s=stats.train_time, eval_time_s=time.perf_counter() - t1,
        epoch_time_s=time.perf_counter() - stats.started, clips_per_s=clips / stats.train_time,
        world_size=run.dist.world_size,
    )  # fmt: skip
    run.rows.append(row)
    write_metrics(run.out_dir, run.rows)
    if cfg.data.real_pack:
        score = row.get(f"real_fewshot_{cfg.eval.best_shot}")
    else:
        score = row.get(f"fewshot_{cfg.eval.best_shot}", row.get("seen_acc"))
    improved = score is not None and score > run.best
    run.best = score if improved else run.best
    extra = {
        "epoch": epoch + 1, "step": run.step, "best": run.best, "classes": run.classes,
        "heldout_words": run.heldout, "config": cfg.to_dict(), "metrics": row,
        "optimizer": run.optimizer.state_dict(), "loss": loss.state_dict(),
    }  # fmt: skip
    if stats.sampler_centers is not None:
        extra["sampler_centers"] = stats.sampler_centers.cpu()
    save_checkpoint(run.out_dir / LAST, run.model, extra)
    if improved:
        save_checkpoint(run.out_dir / BEST, run.model, extra)
    return row


def _batch(run: Run, batch: list[int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augmented waveforms ``(B + U, samples)``, labels ``(B + U,)`` and the teacher's embeddings
    ``(B, D)`` (None without a teacher) of one batch; the ``U`` = ``train.unlabelled`` unlabelled
    clips come last with label ``-1``, as :class:`JointLoss` expects."""
    device, n_unl = run.dist.device, run.cfg.train.unlabelled
    idx = torch.as_tensor(batch, device=run.audio.device)
    wave = _to_float(run.audio[idx].to(device, non_blocking=True))
    if run.conditioned is not None:
        swap = torch.rand(len(batch), generator=gen, device=device) < CONDITIONED_SHARE
        wave = torch.where(swap[:, None], _to_float(run.conditioned[idx].to(device, non_blocking=True)), wave)
    y = run.labels[idx.to(device)]
    targets = None if run.teacher is None else run.teacher[idx.to(device)]
    if n_unl:
        pick = torch.randint(len(run.unlabelled), (n_unl,), device=device, generator=gen).to(run.unlabelled.device)
        wave = torch.cat([wave, _to_float(run.unlabelled[pick].to(device, non_blocking=True))])
        y = torch.cat([y, y.new_full((n_unl,), -1)])
    with torch.no_grad():
        wave = run.augmenter(wave, generator=gen)
    return wave, y, targets


@dataclass
class _Source:
    """One source's clips, as loaded."""

    audio: np.ndarray  # int16 (N, samples)
    words: np.ndarray
    speakers: np.ndarray
    paths: list[str]


def _corpus_source(ds: Any, progress: bool) -> _Source:
    """A Speech Commands–layout corpus's clips (:class:`kws.data.speech_commands.SpeechCommands`), as loaded."""
    return _Source(ds.load_all(progress=progress, pcm16=True), np.array(ds.classes)[ds.labels], ds.speakers,
                   [str(c.path) for c in ds.clips])  # fmt: skip


def _pack_clips(cfg: TrainConfig, split: str, heldout: list[str], samples: int, progress: bool) -> _Source:
    """The real-speech pack's word clips of ``split``, each trimmed of silence and centred in
    ``samples`` (as the synthetic clips are), without the held-out words."""
    from tqdm import tqdm

    from kws.audio import centre_speech, float_to_pcm16, load_audio
    from kws.data.real_pack import read_pack

    clips = read_pack(cfg.data.real_pack, split, cfg.data.real_heldout_fraction)
    held = set(heldout)
    dropped = sorted({c.word for c in clips} & held)
    if dropped:
        log.warning("%s: held-out word(s) left out of the pack: %s", cfg.data.real_pack, ", ".join(dropped))
    clips = [c for c in clips if c.word not in held]
    if not clips:
        raise DataError(f"{cfg.data.real_pack}: no {split} word clips")
    audio = np.empty((len(clips), samples), dtype=np.int16)
    for i, c in enumerate(tqdm(clips, desc=f"real pack ({split})", unit="clip", disable=not progress)):
        audio[i] = float_to_pcm16(centre_speech(load_audio(c.path), samples))
    words = np.array([c.word for c in clips], dtype=str)
    log.info("real pack %s: %d clips of %d words", split, len(clips), len(set(words.tolist())))
    return _Source(audio, words, np.array([c.speaker for c in clips], dtype=str), [str(c.path) for c in clips])


def _conditioned(cfg: TrainConfig, audio: np.ndarray, progress: bool) -> np.ndarray:
    """A copy of every training clip ``audio`` (int16) through recording conditions
    (:func:`kws.data.augment.augment_conditions` at its default odds: a simulated room, real
    noise, a telephone or laptop channel, an Opus or MP3 codec), made once per run: at about
    7 ms a clip, too slow for every batch. The noise is the pack's recordings with
    ``data.real_pack``, else ``data.root``'s. The same on every rank (seeded by ``train.seed``)."""
    from tqdm import tqdm

    from kws.audio import float_to_pcm16
    from kws.data.augment import ConditionsConfig, augment_conditions, load_noise_folder, make_rir_bank
    from kws.data.speech_commands import background_noise

    conditions = ConditionsConfig()
    rirs = make_rir_bank(conditions, seed=cfg.train.seed)
    pack = cfg.data.real_pack
    noises = load_noise_folder(Path(pack) / "noise") if pack else background_noise(cfg.data.root)
    rng = np.random.default_rng(cfg.train.seed)
    out = np.empty_like(audio)
    for i in tqdm(range(len(audio)), desc="recording conditions", unit="clip", disable=not progress):
        clip = _to_float(torch.from_numpy(audio[i])).numpy()
        out[i] = float_to_pcm16(augment_conditions(clip, rng, conditions, rirs, noises))
    return out


def _load_teacher(name: str) -> Any:
    from kws.embedder import load_embedder

    try:
        return load_embedder(name, threads=torch.get_num_threads())
    except KwsError as exc:
        raise ConfigError(f"data.teacher: {exc}") from None


def _teacher_targets(
    cfg: TrainConfig, teacher: Any, audio: np.ndarray, paths: list[str], words: np.ndarray, speakers: np.ndarray,
    synthetic: np.ndarray, progress: bool,
) -> np.ndarray:  # fmt: skip
    """The teacher's embeddings ``(N, D)`` float32 of the training clips ``audio`` (int16, as
    loaded, clean), each trimmed of silence so that the teacher centres it in its own window.

    Rows of zeros are clips left without one: synthetic clips of speakers past the first
    ``data.max_speakers``, or not in ``data.speakers`` (the teacher's stem is what costs CPU
    time). Cached in ``data.cache_dir``, keyed by the clips and the teacher, with a checksum
    (:func:`kws.train_head.cached`).
    """
    import hashlib

    from kws.audio import trim_silence
    from kws.train_head import FrameSet, cached

    chosen = np.ones(len(audio), dtype=bool)
    kept = kept_speakers(cfg.data, speakers[synthetic].tolist())
    if kept is not None:
        chosen = ~synthetic | np.isin(speakers, kept)
    idx = np.flatnonzero(chosen)
    files = hashlib.sha256("\n".join(paths[i] for i in idx).encode()).hexdigest()
    key = {"set": "teacher", "files": files, "teacher": teacher.model_id, "input": "trimmed training clip"}

    def build() -> FrameSet:
        from tqdm import tqdm

        chunk, out = 256, []
        for at in tqdm(range(0, len(idx), chunk), desc="teacher embeddings", unit="chunk", disable=not progress):
            out.append(teacher([trim_silence(audio[i].astype(np.float32) / 32768.0) for i in idx[at : at + chunk]]))
        emb = np.concatenate(out) if out else np.zeros((0, teacher.dim), np.float32)
        return FrameSet(emb.astype(np.float16), words[idx], speakers[idx])

    name = f"teacher-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}.npz"
    fs = cached(Path(cfg.data.cache_dir) / name, key, build)
    log.info("teacher %s: embeddings of %d of %d training clips", teacher.model_id, len(idx), len(audio))
    targets = np.zeros((len(audio), fs.frames.shape[1]), dtype=np.float32)
    targets[idx] = fs.frames
    return targets


def _unlabelled_audio(cfg: TrainConfig, words: list[str], heldout: list[str], progress: bool) -> torch.Tensor | None:
    """int16 clips ``(N, samples)`` of ``data.unlabelled_root``'s training split, its words that are
    neither training nor held-out words (``None`` when ``train.unlabelled`` is 0)."""
    from kws.data.speech_commands import SpeechCommands, list_words

    if cfg.train.unlabelled == 0:
        return None
    taken = set(words) | set(heldout)
    others = [w for w in list_words(cfg.data.unlabelled_root) if w not in taken]
    if not others:
        raise ConfigError(f"data.unlabelled_root {cfg.data.unlabelled_root}: every word is a training or held-out word")
    unl = SpeechCommands(cfg.data.unlabelled_root, "training", words=others)
    log.info("unlabelled speech: %d clips of %d other words, %d per batch", len(unl), len(others), cfg.train.unlabelled)
    return torch.from_numpy(unl.load_all(progress=progress, pcm16=True))


class _ClassMeans:
    """Running per-class sums of training embeddings over an epoch (for the hard-class sampler)."""

    def __init__(self, num_classes: int, dim: int, device: torch.device) -> None:
        self.sums = torch.zeros(num_classes, dim, device=device)
        self.counts = torch.zeros(num_classes, device=device)

    def add(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums.index_add_(0, labels, embeddings.float())
        self.counts += torch.bincount(labels, minlength=len(self.counts)).to(self.counts.dtype)


def _sampler_centers(loss: JointLoss, means: _ClassMeans | None, distributed: bool) -> torch.Tensor:
    """Class centers ``(classes, D)`` for the hard-class sampler, identical on every rank.

    The center loss's centers when that term is trained (already synchronised
    across ranks); else the epoch's mean training embedding of each class,
    summed over ranks (zero for a class no rank saw).
    """
    if means is None:
        return loss.terms["center"].centers.detach().clone()
    if distributed:
        torch.distributed.all_reduce(means.sums)
        torch.distributed.all_reduce(means.counts)
    return means.sums / means.counts.clamp_min(1.0)[:, None]


def _epoch_batches(sampler: Any, epoch: int, steps: int) -> Iterator[list[int]]:
    """``steps`` batches for ``epoch``: the sampler's plan, then further plans if ``steps`` asks for more."""
    done, part = 0, 0
    while True:
        sampler.set_epoch(epoch + part * 1_000_000)
        for batch in sampler:
            yield batch
            done += 1
            if done == steps:
                return
        part += 1


# ---------------------------------------------------------------------------- building blocks


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.01) -> float:
    """Learning-rate multiplier at optimizer ``step`` of ``total``.

    ``cosine``: linear warm-up from 0 over ``warmup`` steps, then cosine decay to
    ``min_ratio``. ``onecycle``: cosine rise from 1/25 over ``warmup`` steps,
    then cosine decay to 1/25 · 1e-4 (the shape of Smith's one-cycle policy).
    """
    step = min(step, total - 1)
    if schedule == "cosine":
        start, end = 0.0, min_ratio
    elif schedule == "onecycle":
        start, end = 1 / 25, 1 / 25 * 1e-4
    else:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if step < warmup:
        t = (step + 1) / warmup
        return start + (1 - start) * (t if schedule == "cosine" else 0.5 * (1 - math.cos(math.pi * t)))
    t = (step - warmup) / max(1, total - warmup - 1)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


def build_loss(cfg: LossConfig, dim: int, num_classes: int, teacher_dim: int = 0) -> JointLoss:
    """The configured :class:`JointLoss` (terms with weight 0 are left out); ``teacher_dim``: the
    size of the teacher's embeddings, for the ``distill`` term.

    The metric term is named after its loss (``triplet``, ``circle`` …), so the
    logged columns say which one was trained.
    """
    terms: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    if cfg.metric_term_weight() > 0:
        terms[cfg.metric] = build_metric_loss(cfg.metric, cfg.metric_params(), dim, num_classes)
        weights[cfg.metric] = cfg.metric_term_weight()
    if cfg.center > 0:
        terms["center"] = CenterLoss(num_classes, dim, cfg.center_alpha)
        weights["center"] = cfg.center
    if cfg.classifier > 0:
        terms["classifier"] = ClassifierHead(
            dim, num_classes, cfg.classifier_kind, cfg.classifier_scale, cfg.classifier_margin
        )
        weights["classifier"] = cfg.classifier
    if cfg.distill > 0:
        if teacher_dim < 1:
            raise ConfigError("loss.distill needs a teacher (data.teacher, scratch encoder only)")
        terms["distill"] = DistillLoss(dim, teacher_dim)
        weights["distill"] = cfg.distill
    return JointLoss(terms, weights)


def model_config(cfg: ModelSection) -> ModelConfig:
    return ModelConfig(encoder=preset(cfg.size, cfg.embedding_dim))


class TrainStep(nn.Module):
    """Waveforms ``(batch, samples)`` and labels ``(batch,)`` → ``(total loss, term values, embeddings)``.

    One module around everything with parameters, so that a single
    DistributedDataParallel wrapper synchronises encoder and classifier head.
    The front-end runs in float32 (log of small powers), the encoder under bf16
    autocast when enabled, the losses in float32.
    """

    def __init__(self, model: KeywordModel, specaug: SpecAugment, loss: JointLoss, bf16: bool) -> None:
        super().__init__()
        self.model, self.specaug, self.loss, self.bf16 = model, specaug, loss, bf16

    def forward(
        self, wave: torch.Tensor, labels: torch.Tensor, unlabelled: int = 0, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        emb = encode(self.model, wave, self.bf16, self.specaug)
        total, terms = self.loss(emb, labels, unlabelled, targets)
        return total, terms, emb


def encode(model: KeywordModel, wave: torch.Tensor, bf16: bool, specaug: SpecAugment | None = None) -> torch.Tensor:
    """Embeddings ``(batch, D)`` float32 of ``wave`` ``(batch, samples)``; the encoder under autocast if ``bf16``."""
    feats = model.frontend(wave)
    if specaug is not None:
        feats = specaug(feats)
    with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=bf16):
        emb = model.encoder(feats)
    return emb.float()


def make_optimizer(params: Iterator[nn.Parameter] | list[nn.Parameter] | list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` (parameters, or parameter groups that may set their own ``lr``)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimize(
    step: TrainStep | nn.Module,
    optimizer: torch.optim.Optimizer,
    wave: torch.Tensor,
    labels: torch.Tensor,
    grad_clip: float,
    unlabelled: int = 0,
    targets: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step; returns the loss terms (plus ``loss``, the total) and the embeddings.

    The last ``unlabelled`` clips of the batch are unlabelled (label ``-1``, see :class:`~kws.losses.JointLoss`);
    ``targets`` are the teacher's embeddings of the others (``distill`` term).
    """
    total, terms, emb = step(wave, labels, unlabelled, targets)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return {"loss": total.detach(), **terms}, emb.detach()


@torch.no_grad()
def embed_audio(
    model: KeywordModel, audio: torch.Tensor | np.ndarray, device: torch.device, bf16: bool, batch_size: int = 256
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of clips ``(N, samples)`` (float32, or int16 PCM), in eval mode."""
    was_training = model.training
    model.eval()
    audio = torch.as_tensor(audio)
    out = []
    for i in range(0, len(audio), batch_size):
        out.append(encode(model, _to_float(audio[i : i + batch_size].to(device)), bf16).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, model.dim), np.float32)


def _to_float(pcm: torch.Tensor) -> torch.Tensor:
    return pcm.float() / 32768.0 if pcm.dtype == torch.int16 else pcm.float()


# ---------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            # NCCL needs to know this rank's GPU, or it guesses from the rank number.
            torch.distributed.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)


def _setup(device_name: str) -> _Dist:
    """Device and process group from ``train.device`` and torchrun's environment variables."""
    if device_name == "cuda" and not torch.cuda.is_available():
        raise KwsError("train.device is 'cuda' but no CUDA device is available (use 'cpu' or 'auto')")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not torch.distributed.is_initialized():
        # Generous timeout: other ranks wait at a barrier while rank 0 evaluates.
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=60))
        owns = True
    return _Dist(rank, world, device, owns)


# ---------------------------------------------------------------------------- evaluation


@dataclass
class _EvalSet:
    """Audio and labels for the per-epoch measurements (rank 0 only)."""

    ref_audio: torch.Tensor  # int16 (N, samples): up to ref_per_word training clips per seen word
    ref_labels: np.ndarray
    val_audio: np.ndarray | None  # seen words, validation speakers
    val_labels: np.ndarray | None
    heldout_audio: np.ndarray | None  # held-out words, testing speakers
    heldout_labels: np.ndarray | None
    heldout_speakers: np.ndarray | None
    real: _Source | None = None  # the real-speech pack's held-out speakers


def _eval_set(
    cfg: TrainConfig, train_set: Any, train_audio: torch.Tensor, heldout: list[str], progress: bool
) -> _EvalSet:
    from kws.data.speech_commands import SpeechCommands, list_words

    rng = np.random.default_rng(cfg.train.seed)
    ref_idx = np.concatenate([
        rng.permutation(np.flatnonzero(train_set.labels == c))[: cfg.eval.ref_per_word]
        for c in range(len(train_set.classes))
    ])  # fmt: skip
    ref_idx.sort()
    ref_audio = train_audio[torch.from_numpy(ref_idx).to(train_audio.device)]
    val = SpeechCommands(cfg.data.root, "validation", words=train_set.classes)
    val_audio = val.load_all(progress=progress) if len(val) else None
    present = set(list_words(cfg.data.root))
    missing = [w for w in heldout if w not in present]
    if missing:
        log.warning("held-out word(s) not in the corpus, left out of few-shot evaluation: %s", ", ".join(missing))
    heldout_words = [w for w in heldout if w in present]
    test = SpeechCommands(cfg.data.root, "testing", words=heldout_words) if len(heldout_words) >= 2 else None
    if test is None or len(test) == 0:
        log.warning("fewer than 2 held-out words with testing clips: no few-shot evaluation")
        test = None
    elif len(heldout_words) < cfg.eval.n_way:
        log.info("only %d held-out words: few-shot episodes are %d-way", len(heldout_words), len(heldout_words))
    return _EvalSet(
        ref_audio=ref_audio,
        ref_labels=train_set.labels[ref_idx],
        val_audio=val_audio,
        val_labels=val.labels if val_audio is not None else None,
        heldout_audio=test.load_all(progress=progress) if test is not None else None,
        heldout_labels=test.labels if test is not None else None,
        heldout_speakers=test.speakers if test is not None else None,
        real=_pack_clips(cfg, "heldout", heldout, train_audio.shape[1], progress) if cfg.data.real_pack else None,
    )


def evaluate_epoch(
    model: KeywordModel, data: _EvalSet, cfg: EpochEvalConfig, device: torch.device, bf16: bool
) -> dict[str, float]:
    """Embedding-space figures of ``model`` on ``data``.

    Keys: ``seen_acc``, ``fewshot_<k>`` and ``fewshot_<k>_ci95`` per shot count, ``eer`` (held-out
    synthetic words), and the same prefixed ``real_`` on the real-speech pack's held-out speakers;
    a figure the data cannot give is left out.
    """
    from kws.metrics import nearest_center_accuracy

    out: dict[str, float] = {}
    if data.val_audio is not None:
        ref = embed_audio(model, data.ref_audio, device, bf16, cfg.batch_size)
        val = embed_audio(model, data.val_audio, device, bf16, cfg.batch_size)
        out["seen_acc"] = nearest_center_accuracy(ref, data.ref_labels, val, data.val_labels)
    if data.heldout_audio is not None:
        emb = embed_audio(model, data.heldout_audio, device, bf16, cfg.batch_size)
        out.update(few_shot_figures(emb, data.heldout_labels, data.heldout_speakers, cfg, ""))
    if data.real is not None:
        emb = embed_audio(model, data.real.audio, device, bf16, cfg.batch_size)
        labels = np.unique(data.real.words, return_inverse=True)[1]
        out.update(few_shot_figures(emb, labels, data.real.speakers, cfg, "real_"))
    return out


def few_shot_figures(emb: np.ndarray, labels: np.ndarray, speakers: np.ndarray, cfg: EpochEvalConfig,
              prefix: str) -> dict[str, float]:  # fmt: skip
    """Few-shot accuracy across speakers (with its 95% interval) per shot count, and open-set EER,
    of embeddings ``(N, D)``, as ``<prefix>fewshot_<k>``, ``<prefix>fewshot_<k>_ci95``, ``<prefix>eer``."""
    from kws.metrics import few_shot_accuracy, open_set_eer

    out: dict[str, float] = {}
    for k in cfg.shots:
        try:
            res = few_shot_accuracy(
                emb, labels, n_way=cfg.n_way, k_shot=k, episodes=cfg.episodes,
                queries=cfg.queries, speakers=speakers, seed=0,
            )  # fmt: skip
        except ValueError as exc:
            log.warning("no %s%d-shot evaluation: %s", prefix, k, exc)
            continue
        out[f"{prefix}fewshot_{k}"], out[f"{prefix}fewshot_{k}_ci95"] = res.mean, res.ci95
    try:
        out[f"{prefix}eer"] = open_set_eer(emb, labels, k_shot=cfg.best_shot, episodes=cfg.eer_episodes)
    except ValueError as exc:
        log.warning("no %sopen-set EER: %s", prefix, exc)
    return out


# ---------------------------------------------------------------------------- logs and checkpoints


def write_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv atomically with every epoch's row so far."""
    from kws.fileio import atomic_path

    with atomic_path(out_dir / METRICS_JSONL) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out_dir / METRICS_CSV) as tmp:
        tmp.write_text(buf.getvalue())


def _read_metrics(out_dir: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    path = out_dir / METRICS_JSONL
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("epoch", 0) <= up_to_epoch]


def _load_resume(path: Path, model: KeywordModel, classes: list[str]) -> dict[str, Any]:
    payload = load_checkpoint(path)
    if payload["config"] != model.cfg:
        raise CheckpointError(f"{path}: was trained with another model config; resume with the same [model] settings")
    extra = payload["extra"]
    if extra.get("classes") != classes:
        raise CheckpointError(f"{path}: was trained on other words; resume with the same [data] settings")
    model.load_state_dict(payload["state_dict"])
    return extra
