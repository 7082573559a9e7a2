"""Training kws's head over a frozen pretrained stem, on cached stem frames.

The stem never changes, so each training clip goes through it once: a few copies
of every clip (copy 0 centred and clean; the others at a random place in the
window, at a random level, under real noise, optionally through simulated rooms,
band limits and codecs) are turned into stem frames and
cached on disk as float16, with a checksum. An epoch then only runs the head,
which takes seconds on a CPU. Batches are P words × K clips drawn from every
source at once (the synthetic corpus and the real-speech pack share labels by
word), each clip as one of its copies at random, scored by the same
:class:`kws.losses.JointLoss` as the scratch encoder. After each epoch the
embedding space is measured on the held-out words of the synthetic corpus
(testing speakers) and on the pack's held-out speakers; ``best.pt`` is the best
real-speech epoch.

With ``model.stem_layers`` > 0 the stem's last convolutions are fine-tuned with the
head at a low learning rate (``optim.stem_lr``): the cache then holds the copies'
mel frames (the mel front-end stays frozen, on ONNX Runtime), and every step runs the
stem in PyTorch (:class:`~kws.stems.speech_embedding_torch.TorchSpeechEmbedding`) and
the head over them; the checkpoints carry the tuned stem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kws.audio import load_audio, trim_silence
from kws.errors import ConfigError, DataError, KwsError
from kws.fileio import atomic_path

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "FrameSet", "cached", "measure", "place", "stem_frames", "train_head"]

CACHE_FORMAT = 2  # 2: clips shuffled across chunks, context copies


@dataclass
class FrameSet:
    """Cached stem frames (or mel frames) of a set of clips.

    Attributes:
        frames: ``(N, copies, T, 96)`` float16 stem frames, or the scaled mel frames under
            them, ``(N, copies, 76 + 8 (T - 1), 32)``.
        words: ``(N,)`` the word of each clip.
        speakers: ``(N,)`` speaker ids (prefixed by source).
    """

    frames: np.ndarray
    words: np.ndarray
    speakers: np.ndarray


def place(clip: np.ndarray, window: int, rng: np.random.Generator | None) -> np.ndarray:
    """``clip`` ``(n,)`` in a window of ``window`` samples: centred (``rng`` None) or at a random place.

    A clip longer than the window is cut to the window around its centre.
    """
    out = np.zeros(window, dtype=np.float32)
    if len(clip) > window:
        start = (len(clip) - window) // 2
        return clip[start : start + window].astype(np.float32)
    room = window - len(clip)
    at = room // 2 if rng is None else int(rng.integers(0, room + 1))
    out[at : at + len(clip)] = clip
    return out


def _augment(
    x: np.ndarray, rng: np.random.Generator, noises: Sequence[np.ndarray], rirs: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """A random level (−20…+3 dB around the clip's) and, on 3 clips in 4, real noise at 0–30 dB SNR;
    with ``rirs``, recording conditions instead of that noise: a room, noise, a telephone or
    laptop channel, a codec (:func:`kws.data.augment.augment_conditions`, its default odds)."""
    x = x * 10 ** (rng.uniform(-20, 3) / 20)
    if len(rirs):
        from kws.data.augment import ConditionsConfig, augment_conditions

        x = augment_conditions(x, rng, ConditionsConfig(), rirs, noises)
    elif noises and rng.random() < 0.75:
        noise = noises[int(rng.integers(len(noises)))]
        start = int(rng.integers(0, max(1, len(noise) - len(x))))
        n = np.resize(noise[start : start + len(x)], len(x))
        speech = float(np.mean(x**2)) + 1e-10
        snr = rng.uniform(0, 30)
        x = x + n * np.sqrt(speech / (float(np.mean(n**2)) + 1e-10) / 10 ** (snr / 10))
    peak = float(np.max(np.abs(x)))
    return x / peak * 0.99 if peak > 0.99 else x


def in_context(x: np.ndarray, before: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` ending 0–250 ms before the window's end, with the speech ``before`` it (0.05–0.3 s
    earlier, at −6…+6 dB of its level) cut at the window's start: a keyword as a stream
    holds it when it has just been said, after other words."""
    out = np.zeros(window, dtype=np.float32)
    end = window - int(rng.uniform(0, 0.25) * 16000)
    start = max(0, end - len(x))
    out[start:end] = x[len(x) - (end - start) :]
    stop = start - int(rng.uniform(0.05, 0.3) * 16000)
    if stop > 0 and len(before):
        gain = np.sqrt((np.mean(x**2) + 1e-10) / (np.mean(before**2) + 1e-10)) * 10 ** (rng.uniform(-6, 6) / 20)
        piece = before[-stop:] * gain
        out[stop - len(piece) : stop] = piece
    return out


@dataclass(frozen=True)
class _Chunk:
    """One worker task of :func:`stem_frames`."""

    clips: list[str | np.ndarray]
    frames: int
    copies: int
    seed: int
    noise_paths: list[str]
    context: float
    conditions: bool
    mel: bool


_WORKER_STEM = None
_WORKER_RIRS: list[np.ndarray] = []


def _stem_worker(task: _Chunk) -> np.ndarray:
    """Stem frames ``(n, copies, T, 96)`` (or their mel frames) float16 of one chunk of clips (files or arrays)."""
    from kws.stems.speech_embedding import SpeechEmbeddingStem, samples_for

    global _WORKER_STEM
    if _WORKER_STEM is None:
        _WORKER_STEM = SpeechEmbeddingStem(threads=1)
    if task.conditions and not _WORKER_RIRS:
        from kws.data.augment import ConditionsConfig, make_rir_bank

        _WORKER_RIRS.extend(make_rir_bank(ConditionsConfig()))
    rirs = _WORKER_RIRS if task.conditions else []
    clips, frames, copies, context = task.clips, task.frames, task.copies, task.context
    window = samples_for(frames)
    noises = [load_audio(p) for p in task.noise_paths]
    rng = np.random.default_rng(task.seed)
    speech = [trim_silence(load_audio(c) if isinstance(c, str) else np.asarray(c, dtype=np.float32)) for c in clips]
    waves = []
    for i, x in enumerate(speech):
        waves.append(place(x, window, None))
        for _ in range(copies - 1):
            # The chunk's clips are in random order: the next one is most likely another word.
            y = in_context(x, speech[(i + 1) % len(speech)], window, rng) if rng.random() < context else place(x, window, rng)
            waves.append(_augment(y, rng, noises, rirs))
    # A window of T stem frames holds exactly their mel frames (samples_for).
    out = _WORKER_STEM.mel(np.stack(waves)) if task.mel else _WORKER_STEM(np.stack(waves))
    return out.reshape(len(clips), copies, *out.shape[1:]).astype(np.float16)


def stem_frames(
    clips: Sequence[str | np.ndarray],
    frames: int,
    copies: int,
    seed: int = 0,
    noise_paths: Sequence[str] = (),
    workers: int = 2,
    progress: bool = True,
    desc: str = "stem frames",
    context: float = 0.0,
    conditions: bool = False,
    mel: bool = False,
) -> np.ndarray:
    """Stem frames ``(N, copies, T, 96)`` float16 of clips (paths or 1-D 16 kHz arrays), in worker processes.

    ``context``: the share of augmented copies placed by :func:`in_context` after another clip.
    ``conditions``: augmented copies go through simulated rooms, channels and codecs too.
    ``mel``: the scaled mel frames under the stem frames instead, ``(N, copies, 76 + 8 (T - 1), 32)``.
    """
    from tqdm import tqdm

    chunk = 64
    order = np.random.default_rng(seed).permutation(len(clips))
    shuffled = [clips[i] for i in order]
    tasks = [
        _Chunk(shuffled[i : i + chunk], frames, copies, seed + i, list(noise_paths), context, conditions, mel)
        for i in range(0, len(clips), chunk)
    ]
    if not tasks:
        from kws.stems.speech_embedding import DIM, N_MELS, STRIDE, WINDOW_FRAMES

        shape = (WINDOW_FRAMES + STRIDE * (frames - 1), N_MELS) if mel else (frames, DIM)
        return np.zeros((0, copies, *shape), dtype=np.float16)
    if min(workers, len(tasks)) <= 1:
        parts = [_stem_worker(t) for t in tqdm(tasks, desc=desc, unit="chunk", disable=not progress)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(tqdm(pool.map(_stem_worker, tasks), total=len(tasks), desc=desc, unit="chunk",
                              disable=not progress))  # fmt: skip
    out = np.empty_like(np.concatenate(parts))
    out[order] = np.concatenate(parts)
    return out


def cached(path: Path, key: dict[str, Any], build: Callable[[], FrameSet]) -> FrameSet:
    """The frame set at ``path`` if it was built for ``key`` and its checksum holds; else build and save it.

    A corrupt or stale cache is rebuilt (with a warning), never trained on.
    """
    key = {"cache_format": CACHE_FORMAT, **key}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                stored_key = json.loads(str(z["key"]))
                frames = z["frames"]
                if stored_key == key and str(z["sha256"]) == _checksum(frames):
                    return FrameSet(frames, z["words"].astype(str), z["speakers"].astype(str))
            log.warning("%s: stem-frame cache is stale or corrupt; rebuilding it", path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("%s: unreadable stem-frame cache (%s); rebuilding it", path, exc)
    fs = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f, frames=fs.frames, words=fs.words, speakers=fs.speakers,
                key=json.dumps(key, sort_keys=True), sha256=_checksum(fs.frames),
            )  # fmt: skip
    return fs


def _checksum(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def _synthetic_set(cfg: Any, root: str, subset: str, words: list[str] | None, heldout: list[str], frames: int,
                   copies: int, noise_paths: list[str], progress: bool) -> FrameSet:  # fmt: skip
    from kws.data.speech_commands import SpeechCommands
    from kws.train_config import kept_speakers

    ds = SpeechCommands(root, subset, words=words, heldout_words=heldout)
    keep = np.arange(len(ds))
    chosen = kept_speakers(cfg.data, ds.speakers.tolist(), root == cfg.data.root) if subset == "training" else None
    if chosen is not None:
        keep = np.flatnonzero(np.isin(ds.speakers, chosen))
    clips = [ds.clips[i] for i in keep]
    return _cached_set(cfg, f"synthetic-{subset}", root, clips, frames, copies, cfg.train.seed, noise_paths, progress)


def _pack_set(cfg: Any, split: str, frames: int, copies: int, noise_paths: list[str], progress: bool) -> FrameSet:
    from kws.data.real_pack import read_pack

    clips = read_pack(cfg.data.real_pack, split, cfg.data.real_heldout_fraction)
    if not clips:
        raise DataError(f"{cfg.data.real_pack}: no {split} word clips")
    return _cached_set(cfg, f"pack-{split}", cfg.data.real_pack, clips, frames, copies, cfg.train.seed + 1,
                       noise_paths, progress)  # fmt: skip


def _cached_set(cfg: Any, name: str, root: str, clips: Sequence[Any], frames: int, copies: int, seed: int,
                noise_paths: list[str], progress: bool) -> FrameSet:  # fmt: skip
    """Stem frames of ``clips`` (each with ``path``, ``word`` and ``speaker``), cached in
    ``cfg.data.cache_dir`` as ``<name>-<digest of the files>.npz``; augmented copies (``copies`` > 1)
    as ``cfg.data.context`` and ``cfg.data.conditions`` say. With a fine-tuned stem
    (``cfg.model.stem_layers``), their mel frames, as ``mel-<name>-<digest>.npz``: the same
    copies (same seed), one step before the stem."""
    paths = [str(c.path) for c in clips]
    context = cfg.data.context if copies > 1 else 0.0
    conditions = cfg.data.conditions and copies > 1
    key = {"set": name, "root": str(Path(root).resolve()), "files": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
           "frames": frames, "copies": copies, "context": context, "stem": _stem_id()}  # fmt: skip
    if conditions:  # only when on, so that caches made before the option existed stay valid
        key["conditions"] = True
    if copies > 1:  # the noise mixed under the augmented copies (none without the real pack)
        key["noise"] = hashlib.sha256("\n".join(noise_paths).encode()).hexdigest()
    mel = cfg.model.stem_layers > 0
    if mel:
        key["features"] = "mel"
    # Plain copies keep the name they always had; copies made another way get names of their
    # own, so that switching an option back and forth does not rebuild the cache each time.
    plain = not (context or conditions or noise_paths)
    digest = key["files"] if plain else hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def build() -> FrameSet:
        fr = stem_frames(paths, frames, copies, seed=seed, noise_paths=noise_paths, context=context,
                         conditions=conditions, mel=mel, progress=progress,
                         desc=f"{'mel' if mel else 'stem'} frames: {name}")  # fmt: skip
        return FrameSet(fr, np.array([c.word for c in clips], dtype=str), np.array([c.speaker for c in clips], dtype=str))

    return cached(Path(cfg.data.cache_dir) / f"{'mel-' if mel else ''}{name}-{digest[:12]}.npz", key, build)


def _stem_id() -> str:
    from kws.stems.speech_embedding import stem_id

    return stem_id()


def _init_from(model: torch.nn.Module, source: str) -> None:
    """Start ``model`` (a :class:`~kws.model.HeadModel`) from the head, and the fine-tuned stem if
    it has one, of ``source`` (a bundled model's name or a checkpoint)."""
    from kws.embedder import bundled_file
    from kws.model import HeadModel, load_model

    src = load_model(bundled_file(source, onnx=False) or source)
    # The whitening is refitted to the new run's head, so a source with another power will do.
    if not isinstance(src, HeadModel) or replace(src.cfg.head, whiten=model.cfg.head.whiten) != model.cfg.head:
        raise ConfigError(f"model.init={source!r}: not a head of this shape over this stem ({model.cfg.head})")
    if src.stem is not None and model.stem is None:
        raise ConfigError(f"model.init={source!r} has a fine-tuned stem, which a run on the frozen stem would "
                          "drop; set model.stem_layers to go on tuning it")  # fmt: skip
    model.head.load_state_dict(src.head.state_dict())
    if src.stem is not None:
        model.stem.load_state_dict(src.stem.state_dict())


@torch.no_grad()
def _embed(model: torch.nn.Module, frames: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(frames[i : i + batch].astype(np.float32))) for i in range(0, len(frames), batch)]
    model.train()
    return torch.cat(out).numpy()


def head_config(cfg: Any) -> "HeadConfig":  # noqa: F821 (kws.head imported lazily)
    """The head a training config (:class:`kws.train_config.TrainConfig`) describes."""
    from kws.head import HeadConfig

    m = cfg.model
    return HeadConfig(frames=m.head_frames, channels=m.head_channels, layers=m.head_layers, whiten=m.head_whiten)


def whiten(model: torch.nn.Module, raw: torch.nn.Module, frames: np.ndarray, labels: np.ndarray, fit: str) -> None:
    """Fit a whitening head's output map (no-op without one) to what ``raw`` (the head, or the
    tuned stem and the head) makes of the training clips ``frames`` ``(N, copies, ...)`` (their
    words ``labels`` ``(N,)``): their clean copies (``fit="clean"``) or all of them (``"all"``)."""
    from kws.head import fit_whitening

    if model.cfg.head.whiten <= 0:
        return
    if fit == "clean":
        x, words = frames[:, 0], labels
    else:
        x, words = frames.reshape(-1, *frames.shape[2:]), np.repeat(labels, frames.shape[1])
    model.set_whitening(*fit_whitening(_embed(raw, x), words, model.cfg.head.whiten))


def measure(model: torch.nn.Module, sets: dict[str, FrameSet], cfg: Any) -> dict[str, float]:
    """Few-shot accuracy (across speakers) and open-set EER on each evaluation set's clean copies."""
    from kws.train import few_shot_figures

    out: dict[str, float] = {}
    for name, fs in sets.items():
        labels = np.unique(fs.words, return_inverse=True)[1]
        out.update(few_shot_figures(_embed(model, fs.frames[:, 0]), labels, fs.speakers, cfg.eval, f"{name}_"))
    return out


def train_head(
    cfg: Any, progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train a head over the configured stem (``cfg`` a :class:`kws.train_config.TrainConfig`); returns the last row.

    Writes ``metrics.jsonl``/``metrics.csv``, ``last.pt`` and ``best.pt`` (best
    real-speech few-shot accuracy, or synthetic when there is no real pack) into
    ``cfg.train.out_dir``.
    """
    from kws.data.real_pack import noise_files
    from kws.data.sampler import PKSampler
    from kws.model import HeadModel, ModelConfig, save_checkpoint
    from kws.train import BEST, LAST, build_loss, lr_factor, make_optimizer, write_metrics
    from kws.train_config import resolve_words

    if cfg.train.device not in ("auto", "cpu"):
        raise ConfigError("a head over a frozen stem trains on the CPU (its stem runs on ONNX Runtime)")
    out_dir = Path(cfg.train.out_dir)
    if (out_dir / LAST).exists():
        raise KwsError(f"{out_dir} already holds a training run; choose another --out")
    torch.manual_seed(cfg.train.seed)
    head_cfg = head_config(cfg)
    frames, copies = head_cfg.frames, cfg.data.copies
    noise_paths = [str(p) for p in noise_files(cfg.data.real_pack)] if cfg.data.real_pack else []

    words, heldout = resolve_words(cfg.data)
    train_sets, eval_sets = [], {}
    if cfg.data.root:
        for root in [cfg.data.root, *cfg.data.extra_roots]:
            train_sets.append(_synthetic_set(cfg, root, "training", words, heldout, frames, copies, noise_paths, progress))
        if heldout:
            eval_sets["synthetic"] = _synthetic_set(cfg, cfg.data.root, "testing", heldout, [], frames, 1, [], progress)
    if cfg.data.real_pack:
        train_sets.append(_pack_set(cfg, "training", frames, copies, noise_paths, progress))
        eval_sets["real"] = _pack_set(cfg, "heldout", frames, 1, [], progress)
    if not train_sets:
        raise ConfigError("no training data: set data.root (a synthetic corpus) and/or data.real_pack")

    all_frames = np.concatenate([s.frames for s in train_sets])
    weights = None
    if cfg.data.weights:
        weights = np.concatenate([np.full(len(s.words), w) for s, w in zip(train_sets, cfg.data.weights)])
    classes, labels = np.unique(np.concatenate([s.words for s in train_sets]), return_inverse=True)
    log.info("%d training clips of %d words from %d sources", len(labels), len(classes), len(train_sets))
    if len(classes) < cfg.train.p:
        raise ConfigError(f"train.p={cfg.train.p} exceeds the {len(classes)} training words")

    tune = cfg.model.stem_layers > 0
    model = HeadModel(ModelConfig(stem="speech-embedding", head=head_cfg, tuned_stem=tune))
    if cfg.model.init:
        _init_from(model, cfg.model.init)
    # What a batch of cached features goes through: the head, or the tuned stem then the head
    # (and the whitening, which the losses do not see).
    net = torch.nn.Sequential(model.stem, model) if tune else model
    raw = torch.nn.Sequential(model.stem, model.head) if tune else model.head  # before the whitening
    loss = build_loss(cfg.loss, model.dim, len(classes))
    params = list(model.head.parameters()) + list(loss.parameters())
    groups = [{"params": params, "base_lr": cfg.optim.lr}]
    if tune:
        model.stem.train_last(cfg.model.stem_layers)
        stem_params = [p for p in model.stem.parameters() if p.requires_grad]
        groups.append({"params": stem_params, "base_lr": cfg.optim.stem_lr})
        params = params + stem_params
    opt = make_optimizer(groups, cfg.optim)
    sampler = PKSampler(labels, cfg.train.p, cfg.train.k, seed=cfg.train.seed, weights=weights)
    steps = cfg.train.steps_per_epoch or len(sampler)
    total = steps * cfg.train.epochs
    rng = np.random.default_rng(cfg.train.seed)
    labels_t = torch.from_numpy(labels)

    rows: list[dict[str, Any]] = []
    best = -1.0
    whiten(model, raw, all_frames, labels, cfg.model.head_whiten_fit)
    start = measure(net, eval_sets, cfg)
    rows.append({"epoch": 0, **start})
    if on_epoch:
        on_epoch(rows[-1])
    step = 0
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.time()
        sampler.set_epoch(epoch)
        batches = iter(sampler)
        sums: dict[str, float] = {}
        for _ in range(steps):
            try:
                idx = np.asarray(next(batches))
            except StopIteration:
                batches = iter(sampler)
                idx = np.asarray(next(batches))
            pick = rng.integers(0, copies, size=len(idx))
            x = torch.from_numpy(all_frames[idx, pick].astype(np.float32))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, total, int(cfg.optim.warmup_epochs * steps), cfg.optim.schedule,
                                                   cfg.optim.min_lr_ratio)  # fmt: skip
            # The losses see the head's own output: the whitening is refitted after each epoch.
            total_loss, terms = loss(raw(x), labels_t[idx])
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            step += 1
            for name, value in {"loss": total_loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        row: dict[str, Any] = {"epoch": epoch}
        row.update({("loss" if k == "loss" else f"loss_{k}"): v / steps for k, v in sums.items()})
        whiten(model, raw, all_frames, labels, cfg.model.head_whiten_fit)
        row.update(measure(net, eval_sets, cfg))
        row["clips_per_s"] = steps * len(idx) / (time.time() - t0)
        row["epoch_time_s"] = time.time() - t0
        rows.append(row)
        write_metrics(out_dir, rows)
        extra = {"epoch": epoch, "metrics": row, "classes": classes.tolist()}
        save_checkpoint(out_dir / LAST, model, extra)
        score = row.get(f"real_fewshot_{cfg.eval.best_shot}", row.get(f"synthetic_fewshot_{cfg.eval.best_shot}", 0.0))
        if score > best:
            best = score
            save_checkpoint(out_dir / BEST, model, extra)
        if on_epoch:
            on_epoch(row)
    return rows[-1]
