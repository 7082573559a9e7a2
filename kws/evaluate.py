"""Evaluation reports of an embedder on a Speech Commands–layout corpus.

The corpus is embedded once (:func:`embed_corpus`); each part of the report is
then a function of the embedded corpus (a *section*): N-way K-shot accuracy,
open-set detection (EER, FRR at fixed FAR, DET curve), confusion of minimal
pairs, a 2-D projection of the embedding space, and optionally the effect of
enrolment augmentation. :func:`evaluate` runs the sections and writes a JSON of
the numbers with PNG plots beside it. The 12-class Speech Commands benchmark
(:mod:`kws.twelve_class`) builds on the same embedded corpora and plots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kws.audio import centre_speech
from kws.embedder import Embedder
from kws.errors import DataError, EnrollmentError
from kws.fileio import atomic_path, write_json
from kws.metrics import (
    class_centers,
    eer,
    episode_predictions,
    few_shot_accuracy,
    few_shot_episodes,
    frr_curve,
    normalize,
    open_set_trials,
)

if TYPE_CHECKING:
    from kws.data.speech_commands import SpeechCommands

log = logging.getLogger(__name__)

__all__ = [
    "DET_FARS", "EmbeddedCorpus", "EvalConfig", "augmentation_section", "close_pairs", "embed_corpus",
    "embed_dataset", "evaluate", "few_shot_section", "format_table", "open_set_section", "pair_confusion",
    "pairs_section", "plot_confusion", "plot_det", "plot_few_shot", "plot_projection", "projection",
]

DET_FARS = np.logspace(-3, 0, 61)


@dataclass
class EvalConfig:
    """What :func:`evaluate` measures.

    Attributes:
        subset: corpus split (``training``, ``validation``, ``testing``, ``all``).
        words: words to evaluate on (default: every word folder).
        centre: trim each clip's silence and centre its speech in the window, as
            enrolment does (and as the detector's best-aligned window sees it).
        shots: K of the N-way K-shot episodes.
        ways: N of the episodes (all words if fewer).
        episodes: episodes per K.
        queries: query clips per class and episode.
        across_speakers: queries only from speakers absent from the support set.
        open_set_shots: enrolment clips per word in the open-set test.
        open_set_episodes: enrolment episodes of the open-set test.
        open_set_unknown: in the open-set test, also score the corpus's other words (every
            word folder not evaluated, and ``_unknown_``) against every center, as impostors
            that are never enrolled.
        pairs: minimal pairs to report; ``None``: the ``close_pairs`` closest pairs of word centers.
        close_pairs: how many close pairs to find when ``pairs`` is ``None``.
        pair_shots: enrolment clips per word in the pair test.
        augment_episodes: if > 0, also compare enrolment with and without
            augmentation over this many episodes (``ways``-way, ``augment_shots``-shot).
        augment_shots: K of the augmentation comparison.
        spoken_voices: if > 0, add to each word's support center in the few-shot and
            open-set sections its spoken vector, from this many synthetic voices per
            source (:mod:`kws.spoken`, as ``kws enroll --spoken`` does).
        impostors: with ``spoken_voices``, the other words whose mean the spoken vectors leave
            out: an impostor-set ``.npz`` or a folder of clips (as ``kws enroll --impostors``);
            ``None``: the model's bundled set.
        max_points: at most this many points in the projection plot.
        seed: seed of every random draw.
        speakers: only these speakers' clips (default: all).
    """

    subset: str = "testing"
    words: list[str] | None = None
    centre: bool = True
    shots: tuple[int, ...] = (1, 3, 5)
    ways: int = 10
    episodes: int = 300
    queries: int = 5
    across_speakers: bool = True
    open_set_shots: int = 3
    open_set_episodes: int = 100
    open_set_unknown: bool = False
    pairs: list[tuple[str, str]] | None = None
    close_pairs: int = 5
    pair_shots: int = 3
    augment_episodes: int = 0
    augment_shots: int = 3
    spoken_voices: int = 0
    impostors: str | None = None
    max_points: int = 3000
    seed: int = 0
    speakers: list[str] | None = None


@dataclass
class EmbeddedCorpus:
    """A corpus split and its embeddings.

    Attributes:
        embeddings: ``(N, D)`` unit-norm.
        labels: ``(N,)`` indices into ``classes``.
        classes: the words.
        speakers: ``(N,)`` speaker ids.
        audio: ``(N, samples)`` the clips (kept for sections that re-embed them), or ``None``.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    classes: list[str]
    speakers: np.ndarray
    audio: np.ndarray | None = field(default=None, repr=False)

    def index(self, word: str) -> int:
        if word not in self.classes:
            raise DataError(f"word {word!r} is not in the evaluated words ({', '.join(self.classes)})")
        return self.classes.index(word)


def embed_corpus(
    embedder: Embedder,
    root: str | Path,
    subset: str = "testing",
    words: list[str] | None = None,
    progress: bool = True,
    centre: bool = True,
    speakers: list[str] | None = None,
) -> EmbeddedCorpus:
    """Read a Speech Commands–layout split and embed every clip (see :func:`embed_dataset`)."""
    from kws.data.speech_commands import SpeechCommands

    ds = SpeechCommands(root, subset=subset, words=words, speakers=speakers)
    return embed_dataset(embedder, ds, progress, centre)


def embed_dataset(
    embedder: Embedder,
    ds: SpeechCommands,
    progress: bool = True,
    centre: bool = True,
    keep_audio: bool = True,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> EmbeddedCorpus:
    """Embed every clip of a dataset (with a progress bar).

    With ``centre``, each clip's speech is trimmed and centred first
    (:func:`kws.audio.centre_speech`); ``transform`` then maps the clips
    ``(N, samples)`` to those embedded (e.g. an augmentation); ``keep_audio`` keeps
    the embedded clips in the result.
    """
    from tqdm import tqdm

    if len(ds) == 0:
        raise DataError(f"{ds.root}: the chosen split has no clips of the chosen words")
    audio = ds.load_all(progress=progress)
    if centre:
        audio = np.stack([centre_speech(x, audio.shape[1]) for x in audio])
    if transform is not None:
        audio = transform(audio)
    step = 8 * embedder.batch_size
    chunks = [
        embedder(audio[i : i + step])
        for i in tqdm(range(0, len(audio), step), desc="embedding", unit="batch", disable=not progress)
    ]
    return EmbeddedCorpus(
        embeddings=normalize(np.concatenate(chunks)),
        labels=np.asarray(ds.labels),
        classes=list(ds.classes),
        speakers=np.asarray(ds.speakers),
        audio=audio if keep_audio else None,
    )


# ---------------------------------------------------------------------------- sections


def few_shot_section(
    corpus: EmbeddedCorpus, cfg: EvalConfig, spoken: Sequence[np.ndarray] | None = None
) -> list[dict[str, Any]]:
    """N-way K-shot accuracy (mean and 95% interval) for each K of ``cfg.shots``; ``spoken``: each
    class's spoken vector (:func:`kws.metrics.episode_predictions`)."""
    rows = []
    speakers = corpus.speakers if cfg.across_speakers else None
    ways = min(cfg.ways, len(corpus.classes))
    for k in cfg.shots:
        try:
            res = few_shot_accuracy(
                corpus.embeddings, corpus.labels, ways, k, cfg.episodes, cfg.queries, speakers, cfg.seed, spoken
            )
        except ValueError as exc:
            log.warning("%d-shot episodes skipped: %s", k, exc)
            continue
        rows.append({"ways": ways, "shots": k, "episodes": cfg.episodes, "mean": res.mean, "ci95": res.ci95})
    return rows


def open_set_section(
    corpus: EmbeddedCorpus,
    cfg: EvalConfig,
    spoken: Sequence[np.ndarray] | None = None,
    others: EmbeddedCorpus | None = None,
) -> dict[str, Any]:
    """Detection of enrolled words among the others: mean EER, FRR at 1% and 5% FAR, mean DET curve.
    ``others``: clips of words never enrolled, impostors for every word (``cfg.open_set_unknown``)."""
    rates, frr, at = [], [], []
    for target, impostor in open_set_trials(
        corpus.embeddings, corpus.labels, cfg.open_set_shots, cfg.open_set_episodes, cfg.seed, spoken,
        None if others is None else others.embeddings,
    ):  # fmt: skip
        rates.append(eer(target, impostor)[0])
        frr.append(frr_curve(target, impostor, DET_FARS))
        at.append(frr_curve(target, impostor, np.array([0.01, 0.05])))
    det = np.mean(frr, axis=0)
    frr_1, frr_5 = np.mean(at, axis=0)
    return {
        "shots": cfg.open_set_shots,
        "episodes": cfg.open_set_episodes,
        "other_word_clips": 0 if others is None else int(len(others.labels)),
        "eer": float(np.mean(rates)),
        "eer_ci95": float(1.96 * np.std(rates) / np.sqrt(len(rates))),
        "frr_at_far_1": float(frr_1),
        "frr_at_far_5": float(frr_5),
        "det": {"far": DET_FARS.tolist(), "frr": det.tolist()},
    }


def close_pairs(corpus: EmbeddedCorpus, n: int) -> list[tuple[str, str]]:
    """The ``n`` word pairs whose centers (over all their clips) are most alike."""
    classes, centers = class_centers(corpus.embeddings, corpus.labels)
    sims = centers @ centers.T
    i, j = np.triu_indices(len(classes), k=1)
    order = np.argsort(-sims[i, j])[:n]
    return [(corpus.classes[classes[i[o]]], corpus.classes[classes[j[o]]]) for o in order]


def pair_confusion(corpus: EmbeddedCorpus, a: str, b: str, cfg: EvalConfig) -> dict[str, Any]:
    """How often ``a`` is taken for ``b`` and back, in 2-way ``cfg.pair_shots``-shot episodes."""
    ia, ib = corpus.index(a), corpus.index(b)
    keep = np.flatnonzero(np.isin(corpus.labels, [ia, ib]))
    emb, labels = corpus.embeddings[keep], corpus.labels[keep]
    speakers = corpus.speakers[keep] if cfg.across_speakers else None
    wrong = {ia: 0, ib: 0}
    total = {ia: 0, ib: 0}
    for ep in few_shot_episodes(labels, 2, cfg.pair_shots, cfg.episodes, cfg.queries, speakers, cfg.seed):
        true, pred = episode_predictions(emb, ep)
        for j, c in enumerate(ep.classes):
            total[c] += int(np.sum(true == j))
            wrong[c] += int(np.sum((true == j) & (pred != j)))
    _, centers = class_centers(emb, labels)
    return {
        "a": a,
        "b": b,
        "a_as_b": wrong[ia] / max(total[ia], 1),
        "b_as_a": wrong[ib] / max(total[ib], 1),
        "center_cosine": float(centers[0] @ centers[1]),
        "shots": cfg.pair_shots,
    }


def pairs_section(corpus: EmbeddedCorpus, cfg: EvalConfig) -> list[dict[str, Any]]:
    pairs = cfg.pairs if cfg.pairs is not None else close_pairs(corpus, cfg.close_pairs)
    out = []
    for a, b in pairs:
        try:
            out.append(pair_confusion(corpus, a, b, cfg))
        except ValueError as exc:
            log.warning("pair %s/%s skipped: %s", a, b, exc)
    return out


def projection(corpus: EmbeddedCorpus, max_points: int, seed: int) -> dict[str, Any]:
    """PCA of the embeddings to 2-D (numpy SVD) of at most ``max_points`` clips, and the projected word centers."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(corpus.labels), size=min(max_points, len(corpus.labels)), replace=False))
    x = corpus.embeddings[pick]
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    classes, centers = class_centers(corpus.embeddings, corpus.labels)
    return {
        "points": (x - mean) @ vt[:2].T,
        "labels": corpus.labels[pick],
        "centers": (centers - mean) @ vt[:2].T,
        "center_labels": classes,
        "explained": (s[:2] ** 2 / np.sum(s**2)).tolist(),
    }


def augmentation_section(embedder: Embedder, corpus: EmbeddedCorpus, cfg: EvalConfig) -> dict[str, Any]:
    """Few-shot accuracy of the enrolment pipeline with and without augmentation, on the same episodes.

    Support clips go through :func:`kws.enroll.embed_clips` (checks, trimming,
    centring, and augmentation or not); queries use the corpus embeddings.
    Episodes with a clip the checks refuse (a silent clip) are skipped.
    """
    from tqdm import tqdm

    from kws.enroll import embed_clips

    speakers = corpus.speakers if cfg.across_speakers else None
    ways = min(cfg.ways, len(corpus.classes))
    episodes = few_shot_episodes(
        corpus.labels, ways, cfg.augment_shots, cfg.augment_episodes, cfg.queries, speakers, cfg.seed
    )
    acc: dict[bool, list[float]] = {False: [], True: []}
    skipped = 0
    for ep in tqdm(episodes, desc="augmentation", unit="episode", leave=False):
        try:
            centers = {
                aug: normalize(
                    np.stack([embed_clips(embedder, list(corpus.audio[s]), aug)[0].mean(axis=(0, 1)) for s in ep.support])
                )
                for aug in (False, True)
            }
        except EnrollmentError as exc:
            log.info("augmentation episode skipped: %s", exc)
            skipped += 1
            continue
        q = np.concatenate(ep.queries)
        true = np.concatenate([np.full(len(qi), j) for j, qi in enumerate(ep.queries)])
        for aug, c in centers.items():
            acc[aug].append(float(np.mean(np.argmax(corpus.embeddings[q] @ c.T, axis=1) == true)))
    if not acc[False]:
        raise DataError("no augmentation episode could be run: every episode had a refused clip")
    plain, augmented = np.array(acc[False]), np.array(acc[True])
    diff = augmented - plain
    n = len(diff)
    return {
        "ways": ways,
        "shots": cfg.augment_shots,
        "episodes": n,
        "skipped": skipped,
        "plain": float(plain.mean()),
        "augmented": float(augmented.mean()),
        "difference": float(diff.mean()),
        "difference_ci95": float(1.96 * diff.std() / np.sqrt(n)),
    }


# ---------------------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_det(open_set: dict[str, Any], path: Path) -> None:
    """DET curve (normal-deviate axes) of the open-set test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    lim = 1e-3
    far = np.clip(np.asarray(open_set["det"]["far"]), lim, 1 - lim)
    frr = np.clip(np.asarray(open_set["det"]["frr"]), lim, 1 - lim)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(norm.ppf(far), norm.ppf(frr), label=f"EER {100 * open_set['eer']:.1f}%")
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95])
    for setter in (ax.set_xticks, ax.set_yticks):
        setter(norm.ppf(ticks), [f"{100 * t:g}%" for t in ticks])
    ax.plot(norm.ppf([lim, 1 - lim]), norm.ppf([lim, 1 - lim]), ":", color="grey", linewidth=0.8)
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("false-reject rate")
    ax.set_title(f"open-set detection, {open_set['shots']}-shot enrolment")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_projection(proj: dict[str, Any], classes: list[str], path: Path) -> None:
    """2-D PCA scatter, one colour per word, centers marked and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20")
    for c in np.unique(proj["labels"]):
        pts = proj["points"][proj["labels"] == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.5, color=cmap(c % 20))
    for (x, y), c in zip(proj["centers"], proj["center_labels"]):
        ax.scatter([x], [y], marker="X", s=90, color=cmap(c % 20), edgecolors="black")
        ax.annotate(classes[c], (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ev = proj["explained"]
    ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f}% of variance)")
    ax.set_title("embedding space (PCA), word centers marked")
    _save(fig, path)


def plot_confusion(counts: np.ndarray, classes: list[str] | tuple[str, ...], title: str, path: Path) -> None:
    """Confusion matrix as row-normalised colours (recall along the diagonal) with the counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.55 * n + 2, 0.55 * n + 1.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), classes, rotation=60, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    _save(fig, path)


def plot_few_shot(rows: list[dict[str, Any]], path: Path) -> None:
    """Few-shot accuracy against K, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    shots, means, ci = ([r[k] for r in rows] for k in ("shots", "mean", "ci95"))
    ax.errorbar(shots, means, yerr=ci, marker="o", capsize=4)
    ax.set_xlabel("K (enrolment clips per word)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{rows[0]['ways']}-way K-shot accuracy" if rows else "few-shot accuracy")
    ax.grid(alpha=0.3)
    _save(fig, path)


# ---------------------------------------------------------------------------- report


def _other_words(embedder: Embedder, path: str | None, words: Sequence[str]) -> list[np.ndarray]:
    """For each of ``words``, the impostor embeddings ``(M, D)`` that enrolling it would use."""
    from kws.impostors import embed_impostor_folder, impostors_from_path

    if path is not None and Path(path).is_dir():
        # Embedded once: without one word's clips, a mean over many words barely moves.
        shared = embed_impostor_folder(embedder, path)
        return [shared] * len(words)
    return [impostors_from_path(embedder, path, exclude=w) for w in words]


def evaluate(
    embedder: Embedder, corpus_root: str | Path, cfg: EvalConfig, out_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Run every section on ``corpus_root`` and write ``report.json`` and PNG plots into ``out_dir``.

    Returns:
        the report (the same data as ``report.json``).
    """
    out = Path(out_dir)
    corpus = embed_corpus(
        embedder, corpus_root, cfg.subset, cfg.words, progress=progress, centre=cfg.centre, speakers=cfg.speakers
    )
    if len(corpus.classes) < 2:
        raise DataError("evaluation needs at least two words")
    report: dict[str, Any] = {
        "corpus": str(corpus_root),
        "model_id": embedder.model_id,
        "config": asdict(cfg),
        "clips": int(len(corpus.labels)),
        "words": corpus.classes,
        "speakers": int(len(np.unique(corpus.speakers))),
        "files": {},
    }
    spoken = None
    if cfg.spoken_voices > 0:
        from kws.spoken import SpokenConfig, spoken_vector

        said = [
            spoken_vector(embedder, w, impostors, SpokenConfig(voices=cfg.spoken_voices))
            for w, impostors in zip(corpus.classes, _other_words(embedder, cfg.impostors, corpus.classes))
        ]
        spoken = [vector for vector, _ in said]
        report["spoken"] = {w: sources for w, (_, sources) in zip(corpus.classes, said)}
    others = None
    if cfg.open_set_unknown:
        from kws.data.speech_commands import SpeechCommands

        # Every word the evaluation leaves out, and the test archive's _unknown_ clips.
        ds = SpeechCommands(
            corpus_root, subset=cfg.subset, words=[], heldout_words=corpus.classes, include_unknown=True,
            speakers=cfg.speakers,
        )  # fmt: skip
        if len(ds) == 0:
            raise DataError(f"{corpus_root}: no clips of other words to score as impostors (--open-set-unknown)")
        others = embed_dataset(embedder, ds, progress, cfg.centre)
    try:
        report["open_set"] = open_set_section(corpus, cfg, spoken, others)
    except ValueError as exc:
        log.warning("open-set test skipped: %s", exc)
    report["few_shot"] = few_shot_section(corpus, cfg, spoken)
    report["pairs"] = pairs_section(corpus, cfg)
    if cfg.augment_episodes > 0:
        report["augmentation"] = augmentation_section(embedder, corpus, cfg)

    if report["few_shot"]:
        plot_few_shot(report["few_shot"], out / "few_shot.png")
        report["files"]["few_shot"] = "few_shot.png"
    if "open_set" in report:
        plot_det(report["open_set"], out / "det.png")
        report["files"]["det"] = "det.png"
    proj = projection(corpus, cfg.max_points, cfg.seed)
    plot_projection(proj, corpus.classes, out / "projection.png")
    report["files"]["projection"] = "projection.png"
    report["projection_explained_variance"] = proj["explained"]
    write_json(out / "report.json", report)
    return report


def format_table(report: dict[str, Any]) -> str:
    """A short plain-text summary of a report."""
    lines = [f"{report['clips']} clips, {len(report['words'])} words, {report['speakers']} speakers"]
    if "spoken" in report:
        sources = sorted({s for names in report["spoken"].values() for s in names})
        voices = report["config"]["spoken_voices"]
        lines.append(f"  each enrolment center with the word spoken by {voices} voices of: {', '.join(sources)}")
    for r in report["few_shot"]:
        lines.append(f"  {r['ways']}-way {r['shots']}-shot accuracy   {100 * r['mean']:5.1f}% ± {100 * r['ci95']:.1f}")
    if "open_set" in report:
        o = report["open_set"]
        what = f"{o['shots']}-shot" + (f", {o['other_word_clips']} clips of other words" if o.get("other_word_clips") else "")
        lines.append(f"  {'open-set EER (' + what + ')':<26} {100 * o['eer']:5.1f}% ± {100 * o['eer_ci95']:.1f}")
        lines.append(f"  FRR at 1% / 5% FAR          {100 * o['frr_at_far_1']:5.1f}% / {100 * o['frr_at_far_5']:.1f}%")
    for p in report["pairs"]:
        lines.append(
            f"  {p['a']} → {p['b']} {100 * p['a_as_b']:5.1f}%   {p['b']} → {p['a']} {100 * p['b_as_a']:5.1f}%"
            f"   (center cosine {p['center_cosine']:.2f})"
        )
    if "augmentation" in report:
        a = report["augmentation"]
        lines.append(
            f"  enrolment augmentation ({a['ways']}-way {a['shots']}-shot): {100 * a['plain']:.1f}% → "
            f"{100 * a['augmented']:.1f}% ({100 * a['difference']:+.1f} ± {100 * a['difference_ci95']:.1f} points)"
        )
    return "\n".join(lines)
