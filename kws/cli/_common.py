"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from kws.embedder import BACKENDS, Embedder

if TYPE_CHECKING:
    from kws.detect import DetectorConfig


def add_model_arguments(parser: argparse.ArgumentParser, streaming: bool = False) -> None:
    """``--model``, ``--backend`` and ``--threads``: which embedder a command runs.

    A bundled model runs on ONNX Runtime unless told otherwise (same model id and
    embeddings): importing torch alone takes longer than most commands (``kws detect``
    starts in 0.5 s instead of 4.3 s), and a long-running ``kws serve`` need not hold
    torch in memory.
    ``streaming``: the command embeds one small batch every hop, live; it runs on one
    intra-op thread unless told otherwise.
    """
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="checkpoint (.pt), exported model (.onnx) or a bundled model by name (scratch, speech-embedding); "
        "default: speech-embedding",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, help="inference engine (default: onnx for .onnx files and bundled models, else torch)"
    )
    # On a 2-core machine with both cores kept busy by other jobs (`kws bench detect
    # --load 2`), the detector's real-time factor was 0.065 on one thread and 0.65 on
    # two: the threads fight over the cores, and a hop's batch is too small to split.
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=1 if streaming else None,
        help="inference threads (default: " + ("1, the fastest for live streams on a busy machine)" if streaming else "the engine's)"),
    )


def embedder_from_args(args: argparse.Namespace) -> Embedder:
    """The embedder a command asked for (see :func:`add_model_arguments`)."""
    from kws.embedder import is_bundled, load_embedder

    backend = args.backend or ("onnx" if is_bundled(args.model) else None)
    return load_embedder(args.model, backend=backend, threads=args.threads)


def read_speaker_list(path: str | None) -> list[str] | None:
    """The speaker ids in ``path``, one a line (``None``: no list, every speaker)."""
    from pathlib import Path

    from kws.errors import ConfigError

    if path is None:
        return None
    try:
        ids = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the speaker list ({exc})") from exc
    if not ids:
        raise ConfigError(f"{path}: the speaker list is empty")
    return ids


def add_device_arguments(parser: argparse.ArgumentParser, stdin: bool = False) -> None:
    """``--device``, ``--rate`` and ``--channels``: the input device (:class:`kws.sources.MicrophoneSource`).

    ``stdin``: the command also reads raw PCM on stdin, which ``--rate`` and ``--channels`` describe too.
    """
    parser.add_argument("--device", metavar="DEV", help="input device index or name part (see `kws devices`)")
    pcm = "sample rate of raw PCM on stdin (default 16000), or " if stdin else ""
    parser.add_argument("--rate", type=int, metavar="HZ",
                        help=f"{pcm}the rate to open the device at (default: 16000 if it can, else its own)")
    pcm = "channels of raw PCM on stdin (default 1), or " if stdin else ""
    parser.add_argument("--channels", type=int, metavar="N",
                        help=f"{pcm}the channels to open the device with (default: 1 if it can, else its own)")


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """The streaming detector's settings (:class:`kws.detect.DetectorConfig`)."""
    from kws.detect import DetectorConfig

    d = DetectorConfig()
    parser.add_argument("--hop-ms", type=float, default=d.hop_ms, help="time between scored windows (default %(default)g)")
    parser.add_argument("--refractory-ms", type=float, default=d.refractory_ms,
                        help="rest after an event (default %(default)g)")
    parser.add_argument("--smoothing", type=int, default=d.smoothing,
                        help="average scores over this many hops (default %(default)d)")
    parser.add_argument("--confirm-ms", type=float, default=d.confirm_ms,
                        help="after a keyword crosses its threshold, wait this long and fire the keyword "
                        "that scored best meanwhile (0-500; default %(default)g: at once)")
    parser.add_argument("--threshold-offset", type=float,
                        help="added to every keyword's threshold for streams (default: the model's own, "
                        "+0.16 for speech-embedding, +0.18 for scratch)")
    parser.add_argument("--no-vad", action="store_true", help="embed every window, even silent ones")
    parser.add_argument("--vad-dbfs", type=float, default=d.vad_floor_dbfs,
                        help="energy gate: skip windows quieter than this (default %(default)g)")  # fmt: skip


def detector_config_from_args(args: argparse.Namespace, embedder: Embedder | None = None) -> "DetectorConfig":
    """The detector's settings; without ``--threshold-offset``, ``embedder``'s own stream offset
    (left unset without ``embedder``, for the detector to take its model's)."""
    from kws.detect import DetectorConfig

    cfg = DetectorConfig(
        hop_ms=args.hop_ms,
        smoothing=args.smoothing,
        refractory_ms=args.refractory_ms,
        confirm_ms=args.confirm_ms,
        threshold_offset=args.threshold_offset,
        vad=not args.no_vad,
        vad_floor_dbfs=args.vad_dbfs,
    )
    return cfg if embedder is None else cfg.for_model(embedder)
