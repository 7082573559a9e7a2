"""The training configuration: its sections as dataclasses, reading one from TOML and ``--set``
overrides, and writing the resolved one back as TOML.

Every key of a recipe's ``config.toml`` is a field here; a config file holds only
what differs from these defaults, and ``kws train --print-config`` shows the rest.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kws.data.augment import AugmentConfig
from kws.data.sampler import SAMPLERS
from kws.errors import ConfigError
from kws.features import SpecAugmentConfig
from kws.losses import METRIC_LOSSES, ClassifierHead, build_metric_loss
from kws.model import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DataConfig", "ModelSection", "LossConfig", "OptimConfig", "LoopConfig", "EpochEvalConfig", "TrainConfig",
    "SCHEDULES", "DEVICES", "config_from_dict", "parse_override", "load_config", "kept_speakers", "resolve_words",
]  # fmt: skip

SCHEDULES = ("cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")


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
    # More synthetic corpora in the same layout (e.g. other speech engines), read with the same
    # words and splits. Labels are shared by word across corpora.
    extra_roots: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    words_vocab: str = ""
    heldout_words: list[str] = field(default_factory=list)
    heldout_vocab: str = ""
    on_device: bool = True  # keep the int16 training audio on the GPU (no host→device copies)
    # Unlabelled speech for the OIM loss's queue: the training-split clips of this corpus's
    # words that are neither training nor held-out words; train.unlabelled of them join each batch.
    unlabelled_root: str = ""
    # The real-speech pack (its clips.csv) as a second source, labels shared by word with the
    # synthetic corpus, and the share of its speakers held out for the real-speech curve (which
    # then chooses best.pt). Over a pretrained stem (model.stem): where stem frames (and, for the
    # scratch encoder, teacher embeddings) are cached, copies of each clip in the cache (1 clean
    # + augmented ones) and, to bound the CPU time of the stem, at most this many synthetic
    # training speakers go through it (0: all): over a stem, the speakers trained on; for the
    # scratch encoder, those whose clips get teacher embeddings (data.teacher).
    real_pack: str = ""
    real_heldout_fraction: float = 0.15
    cache_dir: str = "data/stem_cache"
    copies: int = 2
    max_speakers: int = 0
    # The training speakers of data.root to use instead of its first max_speakers (ids, as in
    # its speakers.json); other corpora keep their first max_speakers.
    speakers: list[str] = field(default_factory=list)
    # Scratch encoder: a model (bundled name or checkpoint, as load_embedder takes it) whose
    # embeddings of the clean training clips the encoder learns to reproduce, weighted by
    # loss.distill; "" for none.
    teacher: str = ""
    context: float = 0.0  # share of augmented copies placed after another word, as in a stream
    # Augmented copies also through simulated rooms, channels and codecs (the scratch encoder: half
    # of each batch from one such copy of every clip, made when the run starts).
    conditions: bool = False
    # Each source's sampling weight, in the order root, extra_roots...,
    # real_pack (empty: all 1). A word's K clips in a batch are drawn in proportion to them.
    weights: list[float] = field(default_factory=list)


@dataclass
class ModelSection:
    stem: str = "scratch"  # or "speech-embedding": a frozen stem pretrained on real speech, under a head
    size: str = "small"  # a kws.model preset (scratch stem)
    embedding_dim: int = 128  # scratch stem; a head's embedding has the stem's size
    head_frames: int = 13  # speech-embedding stem: stem frames per window (13: 1.74 s)
    head_channels: int = 128
    head_layers: int = 2
    head_whiten: float = 0.0  # power of the within-word covariance that whitens the output (0: none)
    # the training clips' copies the whitening is fitted to: "clean" (centred, as recorded) or
    # "all" (with the augmented ones: placement, level, noise, recording conditions)
    head_whiten_fit: str = "clean"
    # speech-embedding stem: its last N convolutions (of 20) fine-tuned with the head at
    # optim.stem_lr, the stem then running in PyTorch on cached mel frames each step (0: frozen,
    # on cached stem frames). The trained model carries its stem and has a model id of its own.
    stem_layers: int = 0
    # speech-embedding stem: a model over it (bundled name or checkpoint) whose head, and stem if
    # tuned, start the run ("": a new head, the untrained mean-pooled stem).
    init: str = ""


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
    npair_scale: float = 10.0  # inverse temperature of the N-pair softmax
    coupled_clusters_margin: float = 0.5
    circle_m: float = 0.25
    circle_gamma: float = 80.0
    ms_alpha: float = 2.0
    ms_beta: float = 50.0
    ms_base: float = 0.5
    ms_epsilon: float = 0.1  # the multi-similarity miner's slack
    oim_queue_size: int = 4096  # unlabelled (label -1) embeddings kept as extra negatives (train.unlabelled)
    oim_momentum: float = 0.5
    oim_scale: float = 10.0
    proxy_anchor_proxies_per_class: int = 1
    proxy_anchor_alpha: float = 32.0
    proxy_anchor_delta: float = 0.1
    proxy_anchor_temperature: float = 0.1  # soft maximum over a class's proxies
    center_alpha: float = 0.5
    # Teacher–student term (data.teacher): 1 - cos(W s, t), W a learned map from the embedding
    # to the teacher's, part of the loss and not of the model.
    distill: float = 0.0

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
    stem_lr: float = 3e-5  # the fine-tuned stem's (model.stem_layers), on the same schedule
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
class EpochEvalConfig:
    """What the trainer measures after an epoch (``[eval]``); ``kws eval``'s report is :class:`kws.evaluate.EvalConfig`."""

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
    eval: EpochEvalConfig = field(default_factory=EpochEvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values no run could use."""
        from kws.stems import STEMS

        checks = [
            (self.model.stem in STEMS, f"model.stem must be one of {STEMS}"),
            (self.model.head_frames >= 1 and self.model.head_channels >= 1 and self.model.head_layers >= 0,
             "model.head_frames and model.head_channels must be >= 1, model.head_layers >= 0"),
            (0 <= self.model.head_whiten <= 1, "model.head_whiten must be within [0, 1]"),
            (self.model.head_whiten_fit in ("clean", "all"),
             f"model.head_whiten_fit must be 'clean' or 'all', not {self.model.head_whiten_fit!r}"),
            (self.model.stem_layers >= 0, "model.stem_layers must be >= 0"),
            (self.model.stem != "scratch" or not (self.model.stem_layers or self.model.init),
             "model.stem_layers and model.init are for a head over a stem (model.stem)"),
            (self.optim.stem_lr > 0, "optim.stem_lr must be > 0"),
            (self.data.copies >= 1, "data.copies must be at least 1"),
            (0 <= self.data.context <= 1, "data.context must be in [0, 1]"),
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
            (self.model.stem != "scratch" or bool(self.data.root),
             "the scratch encoder needs data.root (a synthetic corpus); the other sources join it"),
            (not self.data.weights or len(self.data.weights)
             == bool(self.data.root) + len(self.data.extra_roots) + bool(self.data.real_pack),
             "data.weights needs one weight per source: root, each of extra_roots, real_pack (those set)"),
            (all(w >= 0 for w in self.data.weights), "data.weights must be >= 0"),
            (self.loss.distill >= 0, "loss.distill must be >= 0"),
            (bool(self.data.teacher) == (self.loss.distill > 0),
             "distillation needs both data.teacher (the teacher model) and loss.distill > 0 (its weight)"),
            (not self.data.teacher or self.model.stem == "scratch", "data.teacher is for the scratch encoder (model.stem)"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.loss.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        """Every setting as TOML, one ``[section]`` each: what :func:`load_config` reads back to this config."""
        return "\n".join(
            f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())
            for name, table in self.to_dict().items()
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


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


def kept_speakers(cfg: DataConfig, available: Any, root: bool = True) -> list[str] | None:
    """The synthetic training speakers to use out of ``available`` (a corpus's training
    speakers): ``cfg.speakers`` for ``data.root`` (``root``), else the first ``cfg.max_speakers``
    in sorted order; ``None`` for all of them.

    Raises:
        ConfigError: a speaker of ``cfg.speakers`` that is not a training speaker of the corpus.
    """
    available = sorted(set(available))
    if root and cfg.speakers:
        missing = sorted(set(cfg.speakers) - set(available))
        if missing:
            raise ConfigError(f"data.speakers: {', '.join(missing)} not among the training speakers of {cfg.root}")
        return list(cfg.speakers)
    return available[: cfg.max_speakers] if cfg.max_speakers else None


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
