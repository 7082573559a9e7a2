"""Training the encoder with metric-learning losses; single device or torchrun + DDP.

One epoch: P×K batches (:class:`kws.data.sampler.PKSampler`, or
:class:`~kws.data.sampler.HardClassSampler` whose batches gather nearby words,
from class centers refreshed every epoch) from the training set held
in memory as int16 (on the GPU when there is one), augmented, turned into
log-mel and masked (SpecAugment) on the training device, encoded, and scored by
a :class:`kws.losses.JointLoss`. After each epoch rank 0 measures the embedding
space (nearest-center accuracy on seen words for validation speakers, few-shot
accuracy and open-set EER on held-out words for testing speakers), appends the
figures to ``metrics.csv`` / ``metrics.jsonl``, and saves ``last.pt`` (everything
needed to resume) and ``best.pt`` (best held-out few-shot accuracy).

Launch several processes with ``torchrun --nproc_per_node=N -m kws train ...``:
the trainer reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment
and uses NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from kws.data.augment import AugmentConfig, Augmenter
from kws.errors import CheckpointError, ConfigError, KwsError
from kws.features import SpecAugment, SpecAugmentConfig
from kws.data.sampler import SAMPLERS
from kws.losses import METRIC_LOSSES, CenterLoss, ClassifierHead, JointLoss, build_metric_loss
from kws.model import KeywordModel, ModelConfig, PRESETS, preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")
LAST, BEST = "last.pt", "best.pt"
METRICS_CSV, METRICS_JSONL = "metrics.csv", "metrics.jsonl"


# ---------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Which corpus and which words.

    Training words are ``words`` plus those of ``words_vocab`` (a bundled
    vocabulary name — ``train``, ``speech_commands`` — or a word-list file),
    minus the held-out words; when both are empty, every word folder of the
    corpus that is not held out. Held-out words (``heldout_words`` plus
    ``heldout_vocab``) are never trained on; those present in the corpus are
    the few-shot evaluation set.
    """

    root: str = "data/synth"
    words: list[str] = field(default_factory=list)
    words_vocab: str = ""
    heldout_words: list[str] = field(default_factory=list)
    heldout_vocab: str = ""
    on_device: bool = True  # keep the int16 training audio on the GPU (no host→device copies)
    # Unlabelled speech for the OIM loss's queue: the training-split clips of this corpus's
    # words that are neither training nor held-out words; train.unlabelled of them join each batch.
    unlabelled_root: str = ""
    # Over a pretrained stem (model.stem): the real-speech pack (its clips.csv) as a second source,
    # the share of its speakers held out for the real-speech curve, where stem frames are cached,
    # copies of each clip in the cache (1 clean + augmented ones) and, to bound the CPU time of
    # the cache, at most this many synthetic training speakers (0: all).
    real_pack: str = ""
    real_heldout_fraction: float = 0.15
    cache_dir: str = "data/stem_cache"
    copies: int = 2
    max_speakers: int = 0


@dataclass
class ModelSection:
    stem: str = "scratch"  # or "speech-embedding": a frozen stem pretrained on real speech, under a head
    size: str = "small"  # a kws.model preset (scratch stem)
    embedding_dim: int = 128  # scratch stem; a head's embedding has the stem's size
    head_frames: int = 13  # speech-embedding stem: stem frames per window (13: 1.74 s)
    head_channels: int = 128
    head_layers: int = 2


@dataclass
class LossConfig:
    """The loss terms, their weights (0 turns a term off) and their settings.

    ``metric`` names the metric-learning term (one of
    :data:`kws.losses.METRIC_LOSSES`), weighted by ``metric_weight``; each
    loss's settings are the keys prefixed with its name (``ms_`` for
    ``multi_similarity``), passed to its constructor without the prefix.
    ``triplet`` is the weight key of configs written when the triplet loss was
    the only metric term: when set (>= 0) it stands for ``metric_weight`` and
    needs ``metric = "triplet"``.
    """

    metric: str = "triplet"
    metric_weight: float = 1.0
    triplet: float = -1.0  # old name of metric_weight; -1: not set
    center: float = 0.1
    classifier: float = 1.0
    classifier_kind: str = "cosine"  # or "softmax"
    classifier_scale: float = 30.0
    classifier_margin: float = 0.2
    triplet_margin: float = 0.2
    triplet_soft: bool = False
    contrastive_pos_margin: float = 0.0
    contrastive_neg_margin: float = 1.0
    npair_scale: float = 10.0
    coupled_clusters_margin: float = 0.5
    circle_m: float = 0.25
    circle_gamma: float = 80.0
    ms_alpha: float = 2.0
    ms_beta: float = 50.0
    ms_base: float = 0.5
    ms_epsilon: float = 0.1
    oim_queue_size: int = 4096
    oim_momentum: float = 0.5
    oim_scale: float = 10.0
    proxy_anchor_proxies_per_class: int = 1
    proxy_anchor_alpha: float = 32.0
    proxy_anchor_delta: float = 0.1
    proxy_anchor_temperature: float = 0.1
    center_alpha: float = 0.5

    def metric_term_weight(self) -> float:
        """The weight of the metric term (``triplet`` when an old config sets it, else ``metric_weight``)."""
        return self.triplet if self.triplet >= 0 else self.metric_weight

    def metric_params(self) -> dict[str, Any]:
        """Constructor arguments of the selected metric loss: its prefixed keys, prefix removed."""
        prefix = ("ms" if self.metric == "multi_similarity" else self.metric) + "_"
        names = [f.name for f in dataclasses.fields(self) if f.name.startswith(prefix)]
        return {name[len(prefix) :]: getattr(self, name) for name in names}

    def validate(self) -> None:
        """Raise :class:`ConfigError` for loss settings no run could use."""
        if self.metric not in METRIC_LOSSES:
            raise ConfigError(f"loss.metric must be one of {', '.join(METRIC_LOSSES)}, got {self.metric!r}")
        if self.triplet >= 0 and self.metric != "triplet":
            raise ConfigError(
                f'loss.triplet is the old weight key of the triplet loss; with loss.metric = "{self.metric}" '
                "set loss.metric_weight instead"
            )
        if self.triplet < 0 and self.triplet != -1.0:
            raise ConfigError("loss weights must be >= 0")
        try:
            # Building a tiny instance runs each loss's own checks, so none is repeated here.
            build_metric_loss(self.metric, self.metric_params(), dim=2, num_classes=2)
        except ValueError as exc:
            raise ConfigError(f"[loss] {self.metric}: {exc}") from None


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (``cosine``), or a one-cycle schedule."""

    lr: float = 2e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine: final lr / lr
    grad_clip: float = 5.0  # max gradient norm; 0 disables clipping


@dataclass
class LoopConfig:
    epochs: int = 30
    p: int = 32  # classes per batch (per process)
    k: int = 4  # clips per class
    steps_per_epoch: int = 0  # batches per epoch and process; 0: one pass over the training set
    device: str = "auto"
    bf16: bool = True  # bf16 autocast of the encoder on CUDA (ignored on CPU)
    seed: int = 0
    out_dir: str = "runs/speech_commands"
    sampler: str = "pk"  # "pk": random P×K batches; "hard_class": each batch's words are each other's nearest
    unlabelled: int = 0  # clips of data.unlabelled_root added to each batch with label -1 (only OIM uses them)


@dataclass
class EvalConfig:
    n_way: int = 10
    shots: list[int] = field(default_factory=lambda: [1, 3, 5])
    best_shot: int = 3  # best.pt is chosen by held-out accuracy at this many shots
    episodes: int = 300
    queries: int = 5
    eer_episodes: int = 100
    ref_per_word: int = 20  # training clips per seen word that make its center
    batch_size: int = 256
    every: int = 1  # evaluate every N epochs (and after the last)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values no run could use."""
        from kws.stems import STEMS

        checks = [
            (self.model.stem in STEMS, f"model.stem must be one of {STEMS}"),
            (self.model.head_frames >= 1 and self.model.head_channels >= 1 and self.model.head_layers >= 0,
             "model.head_frames and model.head_channels must be >= 1, model.head_layers >= 0"),
            (self.data.copies >= 1, "data.copies must be at least 1"),
            (0 <= self.data.real_heldout_fraction < 1, "data.real_heldout_fraction must be in [0, 1)"),
            (self.model.size in PRESETS, f"model.size must be one of {sorted(PRESETS)}"),
            (self.model.embedding_dim >= 2, "model.embedding_dim must be at least 2"),
            (self.loss.classifier_kind in ClassifierHead.KINDS, f"loss.classifier_kind must be one of {ClassifierHead.KINDS}"),
            (min(self.loss.metric_weight, self.loss.center, self.loss.classifier) >= 0, "loss weights must be >= 0"),
            (self.loss.metric_term_weight() + self.loss.center + self.loss.classifier > 0,
             "at least one loss weight must be > 0"),
            (0 < self.loss.center_alpha <= 1, "loss.center_alpha must be in (0, 1]"),
            (self.loss.triplet_margin >= 0, "loss.triplet_margin must be >= 0"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}"),
            (self.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
            (0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]"),
            (self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0"),
            (self.train.epochs >= 1, "train.epochs must be at least 1"),
            (self.train.p >= 2 and self.train.k >= 2, "train.p and train.k must be at least 2 (triplets need both)"),
            (self.train.steps_per_epoch >= 0, "train.steps_per_epoch must be >= 0"),
            (self.train.device in DEVICES, f"train.device must be one of {DEVICES}"),
            (self.train.sampler in SAMPLERS, f"train.sampler must be one of {SAMPLERS}"),
            (self.train.unlabelled >= 0, "train.unlabelled must be >= 0"),
            (self.train.unlabelled == 0 or bool(self.data.unlabelled_root),
             "train.unlabelled > 0 needs data.unlabelled_root (a corpus of other words)"),
            (self.eval.n_way >= 2, "eval.n_way must be at least 2"),
            (bool(self.eval.shots) and min(self.eval.shots) >= 1, "eval.shots must be a non-empty list of counts >= 1"),
            (self.eval.best_shot in self.eval.shots, "eval.best_shot must be one of eval.shots"),
            (min(self.eval.episodes, self.eval.queries, self.eval.eer_episodes) >= 1, "eval episodes and queries must be >= 1"),
            (self.eval.ref_per_word >= 1 and self.eval.batch_size >= 1, "eval.ref_per_word and eval.batch_size must be >= 1"),
            (self.eval.every >= 1, "eval.every must be at least 1"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.loss.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """``value`` checked against the type of the field's ``default`` (TOML lists become tuples where needed)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        if ok and default:
            value = [_coerce(v, default[0], f"{where}[{i}]") for i, v in enumerate(value)]
        if ok and isinstance(default, tuple):
            if len(value) != len(default):
                raise ConfigError(f"{where}: expected {len(default)} values, got {len(value)}")
            value = tuple(value)
    else:  # pragma: no cover - every config field has a scalar or list default
        ok = True
    if not ok:
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return value


def config_from_dict(d: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from nested ``{section: {key: value}}``; unknown keys are errors."""
    defaults = TrainConfig()
    sections = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(TrainConfig)}
    built = {}
    for name, value in d.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; sections are {', '.join(sections)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value")
    for name, default in sections.items():
        table = d.get(name, {})
        known = {f.name for f in dataclasses.fields(default)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                f"[{name}] takes {', '.join(sorted(known))}"
            )
        values = {k: _coerce(v, getattr(default, k), f"{source}: {name}.{k}") for k, v in table.items()}
        built[name] = dataclasses.replace(default, **values)
    cfg = TrainConfig(**built)
    cfg.validate()
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` → ``(section, key, value)``; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML training config (defaults when ``path`` is None) and apply ``--set`` overrides."""
    d: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            d = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    for text in overrides:
        section, name, value = parse_override(text)
        table = d.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {text!r}: [{section}] is not a table")
        table[name] = value
    return config_from_dict(d, source + (" with --set" if overrides else ""))


# ---------------------------------------------------------------------------- pieces


def resolve_words(cfg: DataConfig) -> tuple[list[str] | None, list[str]]:
    """``(training words or None for "every word not held out", held-out words)``."""
    from kws.data.synth import load_vocab

    heldout = list(dict.fromkeys(cfg.heldout_words + (load_vocab(cfg.heldout_vocab) if cfg.heldout_vocab else [])))
    words = list(dict.fromkeys(cfg.words + (load_vocab(cfg.words_vocab) if cfg.words_vocab else [])))
    held = set(heldout)
    words = [w for w in words if w not in held]
    if (cfg.words or cfg.words_vocab) and not words:
        raise ConfigError("data.words / data.words_vocab leave no training word once held-out words are removed")
    return (words or None), heldout


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


def build_loss(cfg: LossConfig, dim: int, num_classes: int) -> JointLoss:
    """The configured :class:`JointLoss` (terms with weight 0 are left out).

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
        self, wave: torch.Tensor, labels: torch.Tensor, unlabelled: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        emb = encode(self.model, wave, self.bf16, self.specaug)
        total, terms = self.loss(emb, labels, unlabelled)
        return total, terms, emb


def encode(model: KeywordModel, wave: torch.Tensor, bf16: bool, specaug: SpecAugment | None = None) -> torch.Tensor:
    """Embeddings ``(batch, D)`` float32 of ``wave`` ``(batch, samples)``; the encoder under autocast if ``bf16``."""
    feats = model.frontend(wave)
    if specaug is not None:
        feats = specaug(feats)
    with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=bf16):
        emb = model.encoder(feats)
    return emb.float()


def make_optimizer(params: Iterator[nn.Parameter] | list[nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimize(
    step: TrainStep | nn.Module,
    optimizer: torch.optim.Optimizer,
    wave: torch.Tensor,
    labels: torch.Tensor,
    grad_clip: float,
    unlabelled: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step; returns the loss terms (plus ``loss``, the total) and the embeddings.

    The last ``unlabelled`` clips of the batch are unlabelled (label ``-1``, see :class:`~kws.losses.JointLoss`).
    """
    total, terms, emb = step(wave, labels, unlabelled)
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
    )


def evaluate(
    model: KeywordModel, data: _EvalSet, cfg: EvalConfig, device: torch.device, bf16: bool
) -> dict[str, float]:
    """Embedding-space figures of ``model`` on ``data``.

    Keys: ``seen_acc``, ``fewshot_<k>`` and ``fewshot_<k>_ci95`` per shot count, ``eer``;
    a figure the data cannot give is left out.
    """
    from kws.metrics import few_shot_accuracy, nearest_center_accuracy, open_set_eer

    out: dict[str, float] = {}
    if data.val_audio is not None:
        ref = embed_audio(model, data.ref_audio, device, bf16, cfg.batch_size)
        val = embed_audio(model, data.val_audio, device, bf16, cfg.batch_size)
        out["seen_acc"] = nearest_center_accuracy(ref, data.ref_labels, val, data.val_labels)
    if data.heldout_audio is not None:
        emb = embed_audio(model, data.heldout_audio, device, bf16, cfg.batch_size)
        for k in cfg.shots:
            try:
                res = few_shot_accuracy(
                    emb, data.heldout_labels, n_way=cfg.n_way, k_shot=k, episodes=cfg.episodes,
                    queries=cfg.queries, speakers=data.heldout_speakers, seed=0,
                )  # fmt: skip
            except ValueError as exc:
                log.warning("no %d-shot evaluation: %s", k, exc)
                continue
            out[f"fewshot_{k}"], out[f"fewshot_{k}_ci95"] = res.mean, res.ci95
        try:
            out["eer"] = open_set_eer(emb, data.heldout_labels, k_shot=cfg.best_shot, episodes=cfg.eer_episodes)
        except ValueError as exc:
            log.warning("no open-set EER: %s", exc)
    return out


# ---------------------------------------------------------------------------- logs and checkpoints


def _write_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> None:
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
    from kws.model import load_checkpoint

    payload = load_checkpoint(path)
    if payload["config"] != model.cfg:
        raise CheckpointError(f"{path}: was trained with another model config; resume with the same [model] settings")
    extra = payload["extra"]
    if extra.get("classes") != classes:
        raise CheckpointError(f"{path}: was trained on other words; resume with the same [data] settings")
    model.load_state_dict(payload["state_dict"])
    return extra


# ---------------------------------------------------------------------------- training


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
    from tqdm import tqdm

    from kws.data.sampler import HardClassSampler, PKSampler
    from kws.data.speech_commands import SpeechCommands, background_noise
    from kws.model import save_checkpoint

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
        is_main = dist.rank == 0
        device = dist.device
        bf16 = cfg.train.bf16 and device.type == "cuda"
        torch.manual_seed(cfg.train.seed)

        words, heldout = resolve_words(cfg.data)
        train_set = SpeechCommands(cfg.data.root, "training", words=words, heldout_words=heldout)
        if len(train_set.classes) < cfg.train.p:
            raise ConfigError(f"train.p={cfg.train.p} exceeds the {len(train_set.classes)} training words")
        log.info(
            "rank %d/%d on %s: %d training clips of %d words",
            dist.rank, dist.world_size, device, len(train_set), len(train_set.classes),
        )  # fmt: skip
        audio = torch.from_numpy(train_set.load_all(progress=progress and is_main, pcm16=True))
        if cfg.data.on_device and device.type == "cuda":
            audio = audio.to(device)
        labels = torch.from_numpy(train_set.labels).to(device)
        unlabelled = _unlabelled_audio(cfg, train_set.classes, heldout, progress and is_main)
        n_unl = cfg.train.unlabelled  # unlabelled clips per batch; `unlabelled` is None when 0
        if unlabelled is not None and cfg.data.on_device and device.type == "cuda":
            unlabelled = unlabelled.to(device)
        eval_data = _eval_set(cfg, train_set, audio, heldout, progress) if is_main else None

        model = KeywordModel(model_config(cfg.model)).to(device)
        loss = build_loss(cfg.loss, cfg.model.embedding_dim, len(train_set.classes)).to(device)
        step_module: nn.Module = TrainStep(model, SpecAugment(cfg.specaugment, model.frontend.cfg), loss, bf16)
        augmenter = Augmenter(cfg.augment, background_noise(cfg.data.root)).to(device)
        optimizer = make_optimizer(list(model.parameters()) + list(loss.parameters()), cfg.optim)

        sampler_type = HardClassSampler if cfg.train.sampler == "hard_class" else PKSampler
        sampler = sampler_type(train_set.labels, cfg.train.p, cfg.train.k, cfg.train.seed, dist.rank, dist.world_size)
        hard = isinstance(sampler, HardClassSampler)
        start_epoch, step, best, rows = 0, 0, -math.inf, []
        if resume:
            extra = _load_resume(out_dir / LAST, model, train_set.classes)
            loss.load_state_dict(extra["loss"])
            optimizer.load_state_dict(extra["optimizer"])
            start_epoch, step, best = int(extra["epoch"]), int(extra["step"]), float(extra["best"])
            rows = _read_metrics(out_dir, start_epoch) if is_main else []
            if hard and "sampler_centers" in extra:
                sampler.set_centers(extra["sampler_centers"])
            log.info("resuming %s after epoch %d", out_dir / LAST, start_epoch)
        if dist.enabled:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )

        steps_per_epoch = cfg.train.steps_per_epoch or len(sampler)
        total_steps = steps_per_epoch * cfg.train.epochs
        warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
        row: dict[str, Any] = rows[-1] if rows else {}
        for epoch in range(start_epoch, cfg.train.epochs):
            # Seeded per (epoch, rank): a resumed run draws what an uninterrupted one would.
            torch.manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + dist.rank)
            gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 7919 + epoch * 131 + dist.rank)
            step_module.train()
            augmenter.train()
            sums: dict[str, torch.Tensor] = {}
            correct = torch.zeros((), device=device)
            # Centers for the hard-class sampler: the center loss keeps them, else running means do.
            class_means = (
                _ClassMeans(len(train_set.classes), model.dim, device) if hard and "center" not in loss.terms else None
            )
            t0 = time.perf_counter()
            bar = tqdm(_epoch_batches(sampler, epoch, steps_per_epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}",
                       unit="batch", disable=not (progress and is_main), leave=False)  # fmt: skip
            for i, batch in enumerate(bar):
                for group in optimizer.param_groups:
                    factor = lr_factor(step, total_steps, warmup, cfg.optim.schedule, cfg.optim.min_lr_ratio)
                    group["lr"] = cfg.optim.lr * factor
                idx = torch.as_tensor(batch, device=audio.device)
                wave = _to_float(audio[idx].to(device, non_blocking=True))
                y = labels[idx.to(device)]
                if n_unl:  # appended after the labelled clips, as JointLoss expects them
                    pick = torch.randint(len(unlabelled), (n_unl,), device=device, generator=gen).to(unlabelled.device)
                    wave = torch.cat([wave, _to_float(unlabelled[pick].to(device, non_blocking=True))])
                    y = torch.cat([y, y.new_full((n_unl,), -1)])
                with torch.no_grad():
                    wave = augmenter(wave, generator=gen)
                terms, emb = optimize(step_module, optimizer, wave, y, cfg.optim.grad_clip, n_unl)
                emb, y = emb[: len(emb) - n_unl], y[: len(y) - n_unl]
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
                if class_means is not None:
                    class_means.add(emb, y)
                if "classifier" in loss.terms:
                    with torch.no_grad():
                        correct += (loss.terms["classifier"].logits(emb).argmax(dim=1) == y).sum()
                step += 1
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
            if hard:
                sampler_centers = _sampler_centers(loss, class_means, dist.enabled)
                sampler.set_centers(sampler_centers)
            n_batches = steps_per_epoch * dist.world_size
            clips = n_batches * cfg.train.p * cfg.train.k
            log.info("rank %d/%d: epoch %d done, %d batches", dist.rank, dist.world_size, epoch + 1, steps_per_epoch)

            if is_main:
                row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"]}
                for n, v in zip(names, stats.tolist()):
                    row["loss" if n == "loss" else f"loss_{n}"] = v / n_batches
                if "classifier" in loss.terms:
                    row["train_acc"] = stats[-1].item() / clips
                t1 = time.perf_counter()
                if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs:
                    row.update(evaluate(model, eval_data, cfg.eval, device, bf16))
                row.update(
                    train_time_s=train_time, eval_time_s=time.perf_counter() - t1, epoch_time_s=time.perf_counter() - t0,
                    clips_per_s=clips / train_time, world_size=dist.world_size,
                )  # fmt: skip
                rows.append(row)
                _write_metrics(out_dir, rows)
                score = row.get(f"fewshot_{cfg.eval.best_shot}", row.get("seen_acc"))
                improved = score is not None and score > best
                best = score if improved else best
                extra = {
                    "epoch": epoch + 1, "step": step, "best": best, "classes": train_set.classes,
                    "heldout_words": heldout, "config": cfg.to_dict(), "metrics": row,
                    "optimizer": optimizer.state_dict(), "loss": loss.state_dict(),
                }  # fmt: skip
                if sampler_centers is not None:
                    extra["sampler_centers"] = sampler_centers.cpu()
                save_checkpoint(out_dir / LAST, model, extra)
                if improved:
                    save_checkpoint(out_dir / BEST, model, extra)
                if on_epoch is not None:
                    on_epoch(row)
            dist.barrier()
        return row if is_main else {}
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


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
