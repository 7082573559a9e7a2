"""Impostor speech: the embeddings of words that are not the keyword, against which
enrolment and feedback calibrate a threshold.

At run time an impostor set is the bundled one of the embedder's model
(``kws/assets/impostors.npz``, or ``impostors_*.npz`` for the other bundled
models), an ``.npz`` the user made, or a folder of clips embedded on the spot.
A keyword calibrated on the bundled set is also calibrated on windows of the model's
bundled running speech (:func:`running_speech`).
:func:`build_impostor_set` makes such an ``.npz`` from a corpus in Speech
Commands layout (a recipe's packaging step, not a run-time one).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio import AUDIO_SUFFIXES, TRIM_DB, centre_speech, load_audio
from kws.embedder import ASSETS, Embedder
from kws.errors import DataError, EnrollmentError
from kws.fileio import atomic_path

__all__ = [
    "IMPOSTORS_PATH", "RUNNING_SPACING_S", "load_impostors", "impostors_from_path", "running_speech",
    "with_running_speech", "embed_impostor_folder", "embed_files", "build_impostor_set",
]  # fmt: skip

log = logging.getLogger(__name__)

IMPOSTORS_PATH = ASSETS / "impostors.npz"
# Neighbouring hops of the background are near copies of one another: one window per 0.4 s
# keeps its variety, and leaves the bundled words about a third of the calibration set.
RUNNING_SPACING_S = 0.4


def load_impostors(embedder: Embedder, exclude: str | None = None, path: Path = IMPOSTORS_PATH) -> np.ndarray:
    """The bundled impostor embeddings ``(M, D)`` of ``embedder``'s model.

    Args:
        exclude: a word whose own clips are left out (the keyword being enrolled,
            if it is one of the impostor set's words).
    Raises:
        EnrollmentError: no impostor set for this model (pass impostor clips instead).
    """
    hint = "pass a folder of other speech with --impostors DIR (or impostors= in Python)"
    if not path.is_file():
        raise EnrollmentError(f"no bundled impostor set ({path}); {hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            model_id = str(z["model_id"])
            emb = np.asarray(z["embeddings"], dtype=np.float32)
            words = np.asarray(z["words"]).astype(str) if "words" in z else np.full(len(emb), "")
    except (OSError, ValueError, KeyError) as exc:
        raise EnrollmentError(f"{path}: unreadable impostor set ({exc}); {hint}") from exc
    if model_id != embedder.model_id and path == IMPOSTORS_PATH:
        # Each bundled model has its own set beside the default's.
        for other in sorted(ASSETS.glob("impostors_*.npz")):
            with np.load(other, allow_pickle=False) as z:
                if str(z["model_id"]) == embedder.model_id:
                    return load_impostors(embedder, exclude, other)
    if model_id != embedder.model_id:
        raise EnrollmentError(
            f"the bundled impostor set was made for model {model_id}, not {embedder.model_id}; {hint}"
        )
    if emb.ndim != 2 or emb.shape[1] != embedder.dim or len(words) != len(emb):
        raise EnrollmentError(f"{path}: malformed impostor set (embeddings {emb.shape}); {hint}")
    if exclude is not None:
        emb = emb[np.char.lower(words) != exclude.lower()]
    return emb


def embed_files(embedder: Embedder, files: Sequence[Path], trim_db: float, desc: str) -> np.ndarray:
    """Embed audio files (trimmed, centred) in batches with a progress bar → ``(n, D)``."""
    from tqdm import tqdm

    out = []
    bs = embedder.batch_size
    for i in tqdm(range(0, len(files), bs), desc=desc, unit="batch", disable=len(files) <= bs, leave=False):
        batch = []
        for f in files[i : i + bs]:
            x = load_audio(f, embedder.sample_rate)
            batch.append(centre_speech(x, embedder.window_samples, db=trim_db))
        out.append(embedder(batch))
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), dtype=np.float32)


def embed_impostor_folder(
    embedder: Embedder,
    folder: str | Path,
    exclude: str | None = None,
    max_clips: int = 2000,
    seed: int = 0,
    trim_db: float = TRIM_DB,
) -> np.ndarray:
    """Embed the audio files under ``folder`` as impostors → ``(M, D)``.

    ``folder`` is a flat folder of clips or a Speech Commands–layout corpus (one
    folder per word). Folders whose name starts with ``_`` (``_background_noise_``)
    are skipped, as are clips in a folder named ``exclude`` (the keyword itself).
    At most ``max_clips`` clips, drawn at random, are used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EnrollmentError(f"{folder}: impostor folder not found")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES
        and not any(part.startswith("_") for part in p.relative_to(folder).parts[:-1])
        and not (exclude is not None and p.parent != folder and p.parent.name.lower() == exclude.lower())
    )
    if not files:
        raise EnrollmentError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) to use as impostors")
    if len(files) > max_clips:
        files = [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), max_clips, replace=False))]
    if len(files) < 50:
        log.warning("only %d impostor clips in %s: the false-accept rate will be a rough estimate", len(files), folder)
    return embed_files(embedder, files, trim_db, desc="impostors")


def impostors_from_path(embedder: Embedder, path: str | Path | None, exclude: str | None = None) -> np.ndarray:
    """Impostor embeddings ``(M, D)`` from ``path``: an impostor-set ``.npz``, a folder
    of clips (see :func:`embed_impostor_folder`), or ``None`` for the bundled set."""
    if path is None:
        return load_impostors(embedder, exclude=exclude)
    path = Path(path)
    if path.is_dir():
        return embed_impostor_folder(embedder, path, exclude=exclude)
    return load_impostors(embedder, exclude=exclude, path=path)


def running_speech(embedder: Embedder, exclude: str | None = None) -> np.ndarray:
    """Windows of the model's bundled background speech (:mod:`kws.background`) as impostors ``(R, D)``.

    Isolated words say how often a word is taken for the keyword; running speech, real voices
    among it, adds the parts of words and the joins between them that a stream shows the
    detector. One window every :data:`RUNNING_SPACING_S`; gated windows and those holding
    ``exclude`` are left out. ``(0, D)`` for a model without a bundled background.
    """
    from kws.background import load_background

    try:
        background = load_background(embedder)
    except EnrollmentError:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    spaced = np.arange(len(background.embeddings)) % max(1, round(RUNNING_SPACING_S / background.hop_s)) == 0
    return background.embeddings[spaced & background.kept(exclude or "")]


def with_running_speech(
    embedder: Embedder, words: np.ndarray, exclude: str | None = None, frames: int | None = None
) -> np.ndarray:
    """What a keyword is calibrated on when it is calibrated on the bundled impostor ``words``
    ``(M, D)``: those and the model's running speech (:func:`running_speech`), unless the keyword
    has a window of its own (``frames``): the running speech is embedded at the model's window,
    and on two-word phrases it cost recall at every false-alarm rate."""
    if frames is not None:
        return words
    return np.concatenate([words, running_speech(embedder, exclude)])


def build_impostor_set(
    embedder: Embedder,
    corpus_root: str | Path,
    words: Sequence[str],
    per_word: int,
    out_path: str | Path = IMPOSTORS_PATH,
    subset: str = "validation",
    seed: int = 0,
) -> Path:
    """Make an impostor-set npz for ``embedder``'s model from a Speech Commands–layout corpus.

    Takes up to ``per_word`` random clips of each word of ``subset`` and stores
    their embeddings with each one's word (so that enrolling one of these words
    leaves its own clips out) and the model id. Written atomically.

    The npz holds ``model_id`` (str), ``embeddings`` ``(M, D)`` float16 and ``words`` ``(M,)`` str.
    """
    from kws.data.speech_commands import SpeechCommands

    ds = SpeechCommands(corpus_root, subset=subset, words=list(words), heldout_words=())
    rng = np.random.default_rng(seed)
    chosen = []
    for word in words:
        idx = [i for i, c in enumerate(ds.clips) if c.word == word]
        if not idx:
            raise DataError(f"{corpus_root}: no {subset} clips of {word!r}")
        chosen += [ds.clips[i] for i in rng.choice(idx, size=min(per_word, len(idx)), replace=False)]
    emb = embed_files(embedder, [c.path for c in chosen], TRIM_DB, desc="impostor set")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
        # float16 halves the bundled file; thresholds need no more than 3 digits.
        np.savez_compressed(
            fh,
            model_id=np.array(embedder.model_id),
            embeddings=emb.astype(np.float16),
            words=np.array([c.word for c in chosen]),
        )
    log.info("wrote %d impostor embeddings (%d words) to %s", len(emb), len(words), out_path)
    return out_path
