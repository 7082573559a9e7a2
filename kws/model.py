"""The models: the scratch encoder (log-mel → L2-normalised embedding) and the head over a pretrained stem.

Architecture: a small 2-D convolutional stem over (mel, time) — so that a shift
in pitch or formants, which moves energy across mel bands, is handled by shared
filters — followed by temporal residual blocks in the style of TC-ResNet
(1-D convolutions over time with the stem's output as channels), attentive
pooling over time and a linear projection to ``embedding_dim``.

With ``stem = "speech-embedding"`` the model is a :class:`HeadModel`: kws's head
(:mod:`kws.head`) over the frames of a frozen stem pretrained on real speech
(:mod:`kws.stems.speech_embedding`), which runs on ONNX Runtime outside the module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kws.audio import SAMPLE_RATE
from kws.errors import CheckpointError
from kws.features import FrontendConfig, LogMel
from kws.head import Head, HeadConfig
from kws.stems import STEMS

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Encoder", "EncoderConfig", "HeadModel", "KeywordModel", "ModelConfig",
    "PRESETS", "build_model", "count_parameters", "load_checkpoint", "load_model", "preset", "save_checkpoint",
]

CHECKPOINT_FORMAT = "kws-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder shape. ``blocks`` is a list of ``(channels, stride)`` residual blocks."""

    stem_channels: int = 8
    blocks: tuple[tuple[int, int], ...] = ((64, 2), (64, 1), (80, 2), (80, 1))
    kernel_size: int = 5
    embedding_dim: int = 128
    dropout: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: the stem, and its front-end and encoder or its head.

    ``stem = "scratch"`` uses ``frontend``, ``encoder`` and ``window_samples``;
    ``stem = "speech-embedding"`` uses ``head`` (its window follows from ``head.frames``)
    and ``tuned_stem``: the model carries stem weights of its own, fine-tuned with the
    head (in PyTorch), instead of running the installed stem as it is.
    """

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    window_samples: int = 16000
    stem: str = "scratch"
    head: HeadConfig = field(default_factory=HeadConfig)
    tuned_stem: bool = False

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise CheckpointError(f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")
        if self.tuned_stem and self.stem == "scratch":
            raise CheckpointError("tuned_stem is for a model over a pretrained stem, not the scratch encoder")
        if self.stem != "scratch":
            from kws.stems.speech_embedding import samples_for

            object.__setattr__(self, "window_samples", samples_for(self.head.frames))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        try:
            enc = dict(d["encoder"])
            enc["blocks"] = tuple(tuple(int(v) for v in b) for b in enc["blocks"])
            cfg = cls(
                frontend=FrontendConfig(**d["frontend"]),
                encoder=EncoderConfig(**enc),
                window_samples=int(d["window_samples"]),
                # Checkpoints written before stems existed are scratch models.
                stem=str(d.get("stem", "scratch")),
                head=HeadConfig(**d.get("head", {})),
                tuned_stem=bool(d.get("tuned_stem", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed model config: {exc}") from exc
        if cfg.frontend.sample_rate != SAMPLE_RATE:
            raise CheckpointError(
                f"the model works at {cfg.frontend.sample_rate} Hz; kws works at {SAMPLE_RATE} Hz only"
            )
        return cfg


PRESETS: dict[str, EncoderConfig] = {
    # 0.23M parameters: the default, about 2 ms per 1 s window on one CPU core.
    "small": EncoderConfig(),
    # 2.4M parameters: for training on a GPU when accuracy matters more than cost.
    "large": EncoderConfig(
        stem_channels=24,
        blocks=((128, 1), (128, 2), (160, 1), (160, 2), (192, 1)),
        kernel_size=9,
    ),
}


def preset(name: str, embedding_dim: int | None = None) -> EncoderConfig:
    """The named encoder size (``small`` or ``large``), optionally with another embedding size."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown model size {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    if embedding_dim is not None:
        cfg = EncoderConfig(**{**asdict(cfg), "embedding_dim": embedding_dim})
    return cfg


class _ResBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(cin, cout, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.skip = (
            nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x))


class Encoder(nn.Module):
    """Log-mel ``(batch, n_mels, frames)`` → unit-norm embedding ``(batch, embedding_dim)``."""

    def __init__(self, cfg: EncoderConfig, n_mels: int) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(1, c, 3, stride=(2, 1), padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=(2, 1), padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )
        stem_out = c * ((n_mels + 3) // 4)
        blocks = []
        cin = stem_out
        for cout, stride in cfg.blocks:
            blocks.append(_ResBlock1d(cin, cout, stride, cfg.kernel_size))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.attention = nn.Conv1d(cin, 1, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.project = nn.Linear(cin, cfg.embedding_dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        # Per-window mean normalisation per mel band: removes the channel
        # (microphone, room, synthesiser) colouring that is constant in time.
        x = logmel - logmel.mean(dim=-1, keepdim=True)
        x = self.stem(x[:, None])
        x = x.flatten(1, 2)
        x = self.blocks(x)
        w = torch.softmax(self.attention(x), dim=-1)
        pooled = (x * w).sum(dim=-1)
        return F.normalize(self.project(self.dropout(pooled)), dim=-1)


class KeywordModel(nn.Module):
    """Waveform ``(batch, window_samples)`` at 16 kHz → unit-norm embedding ``(batch, D)``."""

    def __init__(self, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMel(cfg.frontend)
        self.encoder = Encoder(cfg.encoder, cfg.frontend.n_mels)

    @property
    def dim(self) -> int:
        return self.cfg.encoder.embedding_dim

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(waveform))

    def model_id(self) -> str:
        """Identity of the weights: a digest of the config and every parameter and buffer."""
        return _digest(self)


class HeadModel(nn.Module):
    """Stem frames ``(batch, T, 96)`` → unit-norm embedding ``(batch, 96)``: the trainable part
    of a model over a pretrained stem. The stem runs outside (:class:`kws.embedder.StemEmbedder`):
    the installed one on ONNX Runtime, or, with ``cfg.tuned_stem``, :attr:`stem`, this model's
    fine-tuned copy of it (scaled mel ``(batch, frames, 32)`` → stem frames), whose weights
    are part of the checkpoint and of the model id."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from kws.stems import speech_embedding

        self.cfg = cfg
        self.stem_id = speech_embedding.stem_id()
        self.head = Head(cfg.head, speech_embedding.DIM)
        if cfg.head.whiten > 0:
            # Identity until set_whitening: the trainer fits them to the head it trains.
            self.register_buffer("whiten_mean", torch.zeros(speech_embedding.DIM))
            self.register_buffer("whiten_map", torch.eye(speech_embedding.DIM))
        self.stem: nn.Module | None = None
        if cfg.tuned_stem:
            from kws.stems.speech_embedding_torch import TorchSpeechEmbedding

            self.stem = TorchSpeechEmbedding()

    @property
    def dim(self) -> int:
        from kws.stems.speech_embedding import DIM

        return DIM

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.head(frames)
        if self.cfg.head.whiten > 0:
            out = F.normalize((out - self.whiten_mean) @ self.whiten_map, dim=-1)
        return out

    def set_whitening(self, mean: np.ndarray, matrix: np.ndarray) -> None:
        """Set the whitening of the output (see :func:`kws.head.fit_whitening`)."""
        if self.cfg.head.whiten <= 0:
            raise CheckpointError("this head has no whitening (HeadConfig.whiten is 0)")
        self.whiten_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.whiten_map.copy_(torch.as_tensor(matrix, dtype=torch.float32))

    def model_id(self) -> str:
        """Identity of the whole chain: the stem's weights, the config and the head's weights."""
        return _digest(self, extra=self.stem_id)


def _digest(model: nn.Module, extra: str = "") -> str:
    config = model.cfg.to_dict()
    if model.cfg.stem == "scratch":
        # The config as it read before stems existed: scratch model ids stay what they were.
        del config["stem"], config["head"]
    elif not config["head"]["whiten"]:
        # The config as it read before heads could whiten: their model ids stay what they were.
        del config["head"]["whiten"]
    if not config.get("tuned_stem"):
        # Absent unless set: the ids of models made before stems could be tuned stay what they were.
        config.pop("tuned_stem", None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update(extra.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "kws-" + h.hexdigest()[:16]


def build_model(cfg: ModelConfig) -> KeywordModel | HeadModel:
    """The model a config describes: a :class:`KeywordModel` or, over a pretrained stem, a :class:`HeadModel`."""
    return KeywordModel(cfg) if cfg.stem == "scratch" else HeadModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path: str | Path, model: KeywordModel | HeadModel, extra: dict[str, Any] | None = None) -> None:
    """Save weights, config and ``extra`` (plain data: metrics, optimizer state) atomically.

    Readable by :func:`load_checkpoint` with ``torch.load(weights_only=True)``:
    no arbitrary objects are pickled.
    """
    from kws.fileio import atomic_path

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(model.cfg.to_dict()),
        "model_id": model.model_id(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _why_unreadable(exc: Exception) -> str:
    """What ``torch.load`` found wrong, without its advice to load with ``weights_only=False``
    (which would run whatever code the file holds: kws never does that)."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return (
            "corrupt, or it holds Python objects beyond tensors and plain data; kws never runs code "
            "from a model file: use a checkpoint made by `kws train`"
        )
    first = str(exc).split(". ")[0].strip()
    return f"{type(exc).__name__}: {first}; the file is corrupt, truncated or not a checkpoint"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dict (``config``, ``state_dict``, ``model_id``, ``extra``), validated."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: not a readable kws checkpoint ({_why_unreadable(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a kws checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')} is not supported "
            f"(this kws reads version {CHECKPOINT_VERSION})"
        )
    try:
        payload["config"] = ModelConfig.from_dict(json.loads(payload["config"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: checkpoint has a malformed config ({exc})") from exc
    return payload


def load_model(path: str | Path) -> KeywordModel | HeadModel:
    """Rebuild a model (:func:`build_model`) from a checkpoint, in eval mode."""
    payload = load_checkpoint(path)
    model = build_model(payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config ({exc})") from exc
    model.eval()
    if payload.get("model_id") != model.model_id():
        raise CheckpointError(f"{path}: checkpoint is corrupt (its weights do not match its model id)")
    return model
