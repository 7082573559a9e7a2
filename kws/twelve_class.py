"""The Speech Commands 12-class benchmark: ten command words, ``_unknown_`` and ``_silence_``.

The classifier is built from embeddings of a *reference* corpus (the synthetic
corpus), never from the scored one: each class owns prototypes (unit vectors)
and a clip goes to the class of its most similar prototype, after a per-class
bias is added. The ten words own one prototype each (the center of their clips);
``_unknown_`` owns the center of every other word of the reference corpus (the
Speech Commands convention: any word outside the ten); ``_silence_`` owns the
center of each background-noise recording's 1 s cuts. The biases of
``_unknown_`` and ``_silence_`` are chosen on the reference corpus's validation
speakers (class-balanced accuracy), so no scored clip tunes anything. Those
validation clips first pass through :data:`VALIDATION_AUGMENT` (noise,
reverberation, band-limiting, codec): biases chosen on clean synthetic speech
trust the ten word prototypes more than mismatched recordings deserve, and
send words to ``_unknown_``.

Several reference corpora (say, espeak-ng's 36 training voices and the other
engines' 8) weigh the same in a word's center, whatever their numbers of voices:
the center is the mean of each corpus's own unit center of the word. Voices of one
engine differ less from each other than engines do, so pooling their clips lets
the engine with most voices decide where the word lies (chosen on one half of the
real speakers: 89.8% → 91.9% in setting (a); see the recipe README).

Two settings are scored (:func:`evaluate_twelve_class`):

(a) zero real examples: every prototype from the reference corpus;
(b) K-shot adaptation: each of the ten words gains a prototype, the center of K
    clips of the scored corpus drawn from a random half of its speakers; only the
    other half is scored, and the figures are averaged over several draws. The
    biases for K shots are chosen the same way on the reference corpus (K clips of
    training speakers, validation speakers scored).

The interval of (a) is over the scored corpus's speakers (a bootstrap: one
voice's clips are not independent trials), that of (b) over the draws.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kws.data.augment import AugmentConfig, Augmenter
from kws.data.speech_commands import SILENCE, UNKNOWN, SpeechCommands, background_noise
from kws.embedder import Embedder
from kws.errors import DataError
from kws.evaluate import EmbeddedCorpus, embed_dataset, plot_confusion
from kws.fileio import write_json
from kws.metrics import normalize, speaker_bootstrap_ci

log = logging.getLogger(__name__)

__all__ = [
    "BIAS_GRID", "CLASSES", "COMMANDS", "VALIDATION_AUGMENT", "Prototypes", "ReferenceCorpus", "TwelveClassConfig",
    "balanced_accuracy", "command_centers", "confusion_matrix", "draw_support", "embed_reference",
    "evaluate_twelve_class", "fit_biases", "format_twelve_class", "prototypes_from", "summarise", "top_confusions",
    "twelve_class_labels",
]

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = (*COMMANDS, UNKNOWN, SILENCE)
UNKNOWN_ID, SILENCE_ID = len(COMMANDS), len(COMMANDS) + 1
BIAS_GRID = np.round(np.arange(-0.4, 0.4001, 0.02), 2)
# Recording conditions the synthetic validation clips are put through before the biases are fitted.
VALIDATION_AUGMENT = AugmentConfig(bandlimit_prob=0.5, codec_prob=0.3)


@dataclass
class TwelveClassConfig:
    """What :func:`evaluate_twelve_class` measures.

    Attributes:
        subset: split of the scored corpus (``all`` for the canonical test folders).
        shots: K of setting (b).
        draws: random draws of setting (b) per K.
        centre: trim and centre each clip's speech, as enrolment does.
        augment_validation: put the reference validation clips through
            :data:`VALIDATION_AUGMENT` before fitting the biases.
        silence_clips: background-noise cuts per reference split.
        seed: seed of every draw.
        speakers: only these speakers of the scored corpus (default: all).
    """

    subset: str = "all"
    shots: tuple[int, ...] = (1, 3, 5, 10)
    draws: int = 10
    centre: bool = True
    augment_validation: bool = True
    silence_clips: int = 200
    seed: int = 0
    speakers: list[str] | None = None


@dataclass
class Prototypes:
    """The 12-class classifier: ``vectors`` ``(P, D)`` unit-norm, ``owner`` ``(P,)`` class
    indices into :data:`CLASSES`, and ``biases`` ``(12,)`` added to each class's score."""

    vectors: np.ndarray
    owner: np.ndarray
    biases: np.ndarray

    def raw_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """``(N, 12)``: each class's best cosine similarity over its prototypes, before biases."""
        sims = normalize(embeddings) @ self.vectors.T
        out = np.full((len(sims), len(CLASSES)), -np.inf, dtype=np.float32)
        for c in range(len(CLASSES)):
            mine = self.owner == c
            if mine.any():
                out[:, c] = sims[:, mine].max(axis=1)
        return out

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return np.argmax(self.raw_scores(embeddings) + self.biases, axis=1)

    def with_commands(self, centers: np.ndarray) -> Prototypes:
        """The same classifier with ``centers`` ``(10, D)`` added as a further prototype of each word.

        The reference prototypes stay: a center of one or three real clips is a
        noisier estimate of the word than the reference center of many speakers,
        and replacing it scores below using no real clips at all.
        """
        return Prototypes(
            vectors=np.concatenate([normalize(centers), self.vectors]),
            owner=np.concatenate([np.arange(len(COMMANDS)), self.owner]),
            biases=self.biases.copy(),
        )


def twelve_class_labels(corpus: EmbeddedCorpus) -> np.ndarray:
    """Map a corpus's labels to :data:`CLASSES`: the ten words, ``_silence_``, and every other word as ``_unknown_``."""
    index = {w: CLASSES.index(w) if w in CLASSES else UNKNOWN_ID for w in corpus.classes}
    return np.array([index[w] for w in corpus.classes], dtype=np.int64)[corpus.labels]


def prototypes_from(corpus: EmbeddedCorpus, sources: np.ndarray | None = None) -> Prototypes:
    """Prototypes from a reference corpus embedded with every word and ``_silence_`` (biases zero).

    ``sources``: ``(N,)`` the reference corpus each clip comes from (default: all one);
    a word's center is the mean of each source's unit center of it. Silence
    prototypes are per recording: a silence clip's "speaker" is its noise file.
    """
    sources = np.zeros(len(corpus.labels), dtype=np.int64) if sources is None else np.asarray(sources)
    missing = [w for w in COMMANDS if w not in corpus.classes]
    if missing:
        raise DataError(f"the reference corpus has no clips of {', '.join(missing)}")
    vectors, owner = [], []
    for i, word in enumerate(corpus.classes):
        mine = corpus.labels == i
        if word == SILENCE:
            for rec in np.unique(corpus.speakers[mine]):
                vectors.append(corpus.embeddings[mine & (corpus.speakers == rec)].mean(axis=0))
                owner.append(SILENCE_ID)
        elif mine.any():
            centers = [corpus.embeddings[mine & (sources == k)].mean(axis=0) for k in np.unique(sources[mine])]
            vectors.append(normalize(np.stack(centers)).mean(axis=0))
            owner.append(CLASSES.index(word) if word in COMMANDS else UNKNOWN_ID)
    owner_arr = np.asarray(owner)
    for c in (UNKNOWN_ID, SILENCE_ID):
        if not (owner_arr == c).any():
            raise DataError(f"the reference corpus gives no {CLASSES[c]} prototype")
    return Prototypes(normalize(np.stack(vectors)), owner_arr, np.zeros(len(CLASSES), dtype=np.float32))


def confusion_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(12, 12)`` counts: row = true class, column = predicted class."""
    n = len(CLASSES)
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def balanced_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``true``."""
    cm = confusion_matrix(true, pred)
    support = cm.sum(axis=1)
    return float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))


def fit_biases(raw: np.ndarray, true: np.ndarray, grid: np.ndarray = BIAS_GRID) -> np.ndarray:
    """The ``_unknown_`` and ``_silence_`` biases on ``grid`` that maximise class-balanced accuracy.

    ``raw``: ``(N, 12)`` unbiased scores. Of the best pairs, the one nearest their
    median is taken, so that the biases sit inside the best region, not on its edge.
    """
    commands = raw[:, : len(COMMANDS)]
    top_cmd, arg_cmd = commands.max(axis=1), commands.argmax(axis=1)
    acc = np.empty((len(grid), len(grid)))
    for i, u in enumerate(grid):
        for j, s in enumerate(grid):
            unk, sil = raw[:, UNKNOWN_ID] + u, raw[:, SILENCE_ID] + s
            pred = np.where((sil > unk) & (sil > top_cmd), SILENCE_ID, np.where(unk > top_cmd, UNKNOWN_ID, arg_cmd))
            acc[i, j] = balanced_accuracy(true, pred)
    best = np.argwhere(acc >= acc.max() - 1e-12)
    i, j = best[np.argmin(np.abs(best - np.median(best, axis=0)).sum(axis=1))]
    biases = np.zeros(len(CLASSES), dtype=np.float32)
    biases[UNKNOWN_ID], biases[SILENCE_ID] = grid[i], grid[j]
    return biases


def command_centers(embeddings: np.ndarray, labels12: np.ndarray, support: list[np.ndarray]) -> np.ndarray:
    """``(10, D)``: the center of each word's support clips (indices into ``embeddings``)."""
    return normalize(np.stack([embeddings[idx].mean(axis=0) for idx in support]))


def draw_support(
    labels12: np.ndarray, speakers: np.ndarray, shots: int, rng: np.random.Generator, pool_speakers: np.ndarray | None
) -> list[np.ndarray]:
    """For each command word, ``shots`` clip indices from speakers in ``pool_speakers`` (all if ``None``)."""
    eligible = np.ones(len(labels12), bool) if pool_speakers is None else np.isin(speakers, pool_speakers)
    support = []
    for c in range(len(COMMANDS)):
        idx = np.flatnonzero(eligible & (labels12 == c))
        if len(idx) < shots:
            raise DataError(f"only {len(idx)} clips of {COMMANDS[c]!r} to draw {shots} support clips from")
        support.append(rng.choice(idx, size=shots, replace=False))
    return support


def summarise(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class recall and the matrix of a confusion-count matrix."""
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.full(len(CLASSES), np.nan), where=support > 0)
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(CLASSES, recall)},
        "confusion": cm.tolist(),
        "clips": int(cm.sum()),
    }


def top_confusions(cm: np.ndarray, n: int = 5) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal cells: ``(true, predicted, count)``."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None)[:n]
    return [(CLASSES[i // len(CLASSES)], CLASSES[i % len(CLASSES)], int(off.flat[i])) for i in order if off.flat[i]]


# ---------------------------------------------------------------------------- the benchmark


@dataclass
class ReferenceCorpus(EmbeddedCorpus):
    """One split of the reference corpora, embedded; ``sources`` ``(N,)``: each clip's corpus (index into the roots)."""

    sources: np.ndarray = field(kw_only=True)


def embed_reference(
    embedder: Embedder, roots: Sequence[str | Path], subset: str, cfg: TwelveClassConfig, progress: bool,
    augment: bool = False,
) -> ReferenceCorpus:  # fmt: skip
    """One split of the reference corpora: every word plus ``_silence_`` cuts of each one's background
    noise, a word's clips of every corpus in one class; with ``augment``, put through
    :data:`VALIDATION_AUGMENT` (seeded by ``cfg.seed``)."""
    parts = []
    for root in roots:
        ds = SpeechCommands(root, subset=subset, include_silence=True, silence_clips=cfg.silence_clips, seed=cfg.seed)
        transform = _augmentation(background_noise(root), cfg.seed) if augment else None
        parts.append(embed_dataset(embedder, ds, progress=progress, centre=cfg.centre, keep_audio=False,
                                   transform=transform))  # fmt: skip
    classes = sorted({c for p in parts for c in p.classes})
    return ReferenceCorpus(
        embeddings=np.concatenate([p.embeddings for p in parts]),
        labels=np.concatenate([np.array([classes.index(c) for c in p.classes])[p.labels] for p in parts]),
        classes=classes,
        # Corpora name their speakers independently: one id in two corpora is two speakers.
        speakers=np.concatenate([[f"{k}:{s}" for s in p.speakers] for k, p in enumerate(parts)]),
        sources=np.concatenate([np.full(len(p.labels), k) for k, p in enumerate(parts)]),
    )


def _augmentation(noises: list[np.ndarray], seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """``(N, samples) -> (N, samples)``: :data:`VALIDATION_AUGMENT` with ``noises``, reproducible for ``seed``."""
    augmenter = Augmenter(VALIDATION_AUGMENT, noises).train()
    generator = torch.Generator().manual_seed(seed)

    def apply(audio: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            chunks = [augmenter(torch.from_numpy(audio[i : i + 512]), generator) for i in range(0, len(audio), 512)]
        return torch.cat(chunks).numpy()

    return apply


def evaluate_twelve_class(
    embedder: Embedder,
    corpus_root: str | Path,
    reference_roots: str | Path | Sequence[str | Path],
    cfg: TwelveClassConfig,
    out_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``corpus_root`` in 12 classes with a classifier built on the reference corpora
    ``reference_roots`` (one folder, or several read as one).

    Writes ``twelve_class.json`` and confusion-matrix PNGs (setting (a), and (b)
    for each K) into ``out_dir``. Returns the report.
    """
    out = Path(out_dir)
    roots = [reference_roots] if isinstance(reference_roots, (str, Path)) else list(reference_roots)
    ref_train = embed_reference(embedder, roots, "training", cfg, progress)
    ref_val = embed_reference(embedder, roots, "validation", cfg, progress, augment=cfg.augment_validation)
    test_ds = SpeechCommands(
        corpus_root, subset=cfg.subset, words=COMMANDS, include_unknown=True, include_silence=True, seed=cfg.seed,
        speakers=cfg.speakers,
    )
    test = embed_dataset(embedder, test_ds, progress=progress, centre=cfg.centre, keep_audio=False)
    true = test.labels  # the dataset's classes are CLASSES, in order
    present = np.bincount(true, minlength=len(CLASSES))
    if (present[: len(COMMANDS)] == 0).any():
        raise DataError(f"{corpus_root}: the scored corpus lacks clips of some command words")

    base = prototypes_from(ref_train, ref_train.sources)
    val_true = twelve_class_labels(ref_val)

    # (a) zero real examples.
    protos = Prototypes(base.vectors, base.owner, fit_biases(base.raw_scores(ref_val.embeddings), val_true))
    val_a = balanced_accuracy(val_true, protos.predict(ref_val.embeddings))
    pred_a = protos.predict(test.embeddings)
    cm_a = confusion_matrix(true, pred_a)
    report: dict[str, Any] = {
        "corpus": str(corpus_root),
        "reference": [str(r) for r in roots],
        "model_id": embedder.model_id,
        "config": asdict(cfg),
        "classes": list(CLASSES),
        "class_clips": dict(zip(CLASSES, present.tolist())),
        "zero_shot": {
            **summarise(cm_a),
            "accuracy_ci95": speaker_bootstrap_ci(pred_a == true, test.speakers, seed=cfg.seed),
            "biases": {UNKNOWN: float(protos.biases[UNKNOWN_ID]), SILENCE: float(protos.biases[SILENCE_ID])},
            "validation_balanced_accuracy": val_a,
            "top_confusions": top_confusions(cm_a),
        },
        "few_shot": [],
        "files": {"zero_shot": "confusion_zero_shot.png"},
    }
    plot_confusion(cm_a, CLASSES, f"12-class, zero real examples: {100 * report['zero_shot']['accuracy']:.1f}%",
                   out / "confusion_zero_shot.png")  # fmt: skip

    # (b) K real clips per word from one half of the speakers, the other half scored.
    rng = np.random.default_rng(cfg.seed)
    ref_train_true = twelve_class_labels(ref_train)
    ref_train_speakers = np.unique(ref_train.speakers[ref_train_true < len(COMMANDS)])
    real_speakers = np.unique(test.speakers[true < len(COMMANDS)])
    for k in cfg.shots:
        # Biases for K shots, chosen on the reference corpus: K clips of training speakers, validation scored.
        raw_val = []
        for _ in range(cfg.draws):
            sup = draw_support(ref_train_true, ref_train.speakers, k, rng, ref_train_speakers)
            adapted = base.with_commands(command_centers(ref_train.embeddings, ref_train_true, sup))
            raw_val.append(adapted.raw_scores(ref_val.embeddings))
        biases = fit_biases(np.concatenate(raw_val), np.tile(val_true, cfg.draws))
        cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
        accs = []
        try:
            for _ in range(cfg.draws):
                pool = rng.choice(real_speakers, size=len(real_speakers) // 2, replace=False)
                sup = draw_support(true, test.speakers, k, rng, pool)
                adapted = base.with_commands(command_centers(test.embeddings, true, sup))
                adapted.biases = biases
                scored = ~np.isin(test.speakers, pool)
                draw_cm = confusion_matrix(true[scored], adapted.predict(test.embeddings[scored]))
                accs.append(np.trace(draw_cm) / draw_cm.sum())
                cm += draw_cm
        except DataError as exc:
            log.warning("%d-shot adaptation skipped: %s", k, exc)
            continue
        accs_arr = np.asarray(accs)
        row = {
            "shots": k,
            "draws": cfg.draws,
            **summarise(cm),
            "accuracy": float(accs_arr.mean()),
            "accuracy_ci95": float(1.96 * accs_arr.std() / np.sqrt(len(accs_arr))),
            "biases": {UNKNOWN: float(biases[UNKNOWN_ID]), SILENCE: float(biases[SILENCE_ID])},
            "top_confusions": top_confusions(cm),
        }
        report["few_shot"].append(row)
        name = f"confusion_{k}_shot.png"
        plot_confusion(cm, CLASSES, f"12-class, {k} real clips per word: {100 * row['accuracy']:.1f}%", out / name)
        report["files"][f"{k}_shot"] = name
    write_json(out / "twelve_class.json", report)
    return report


def format_twelve_class(report: dict[str, Any]) -> str:
    """The 12-class table: top-1 accuracy per setting, then per-class recall."""
    z = report["zero_shot"]
    rows = [("(a) zero real examples", z)] + [(f"(b) {r['shots']} real clips/word", r) for r in report["few_shot"]]
    head = f"  {'setting':<26}{'top-1':>8}  " + " ".join(f"{c.strip('_')[:7]:>7}" for c in CLASSES)
    lines = [f"12-class Speech Commands ({sum(report['class_clips'].values())} clips)", head]
    for name, r in rows:
        ci = f"±{100 * r['accuracy_ci95']:.1f}" if "accuracy_ci95" in r else ""
        recall = " ".join(
            "    n/a" if r["per_class_recall"][c] is None else f"{100 * r['per_class_recall'][c]:7.1f}" for c in CLASSES
        )
        lines.append(f"  {name:<26}{100 * r['accuracy']:6.1f}%{ci:<6}{recall}")
    lines.append("  most confused (zero real examples): " + ", ".join(f"{a}→{b} {n}" for a, b, n in z["top_confusions"]))
    return "\n".join(lines)
