"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from kws.embedder import BACKENDS, Embedder

if TYPE_CHECKING:
    from kws.detect import DetectorConfig


def add_model_arguments(parser: argparse.ArgumentParser, few_clips: bool = False, streaming: bool = False) -> None:
    """``--model``, ``--backend`` and ``--threads``: which embedder a command runs.

    ``few_clips``: the bundled model runs on ONNX Runtime (same model id and
    embeddings), for commands that embed a handful of clips (importing torch alone
    would take longer than the whole command) and for ``kws serve`` (a long-running
    process that need not hold torch in memory).
    ``streaming``: the command embeds one small batch every hop, live; it runs on one
    intra-op thread unless told otherwise.
    """
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="checkpoint (.pt) or exported model (.onnx); default: the bundled model",
    )
    onnx_for = ".onnx files and the bundled model" if few_clips else ".onnx files"
    parser.add_argument(
        "--backend", choices=BACKENDS, help=f"inference engine (default: onnx for {onnx_for}, else torch)"
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
    parser.set_defaults(few_clips=few_clips)


def embedder_from_args(args: argparse.Namespace) -> Embedder:
    """The embedder a command asked for (see :func:`add_model_arguments`)."""
    from kws.embedder import load_embedder

    few_clips = getattr(args, "few_clips", False)
    backend = args.backend or ("onnx" if few_clips and args.model is None else None)
    return load_embedder(args.model, backend=backend, threads=args.threads)


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """The streaming detector's settings (:class:`kws.detect.DetectorConfig`)."""
    from kws.detect import DetectorConfig

    parser.add_argument("--hop-ms", type=float, default=100.0, help="time between scored windows (default 100)")
    parser.add_argument(
        "--refractory-ms", type=float, default=1500.0, help="rest after an event (default 1500)"
    )
    parser.add_argument("--smoothing", type=int, default=2, help="average scores over this many hops (default 2)")
    parser.add_argument(
        "--threshold-offset",
        type=float,
        default=DetectorConfig.threshold_offset,
        help=f"added to every keyword's threshold for streams (default {DetectorConfig.threshold_offset})",
    )
    parser.add_argument("--no-vad", action="store_true", help="embed every window, even silent ones")
    parser.add_argument(
        "--vad-dbfs", type=float, default=-55.0, help="energy gate: skip windows quieter than this (default -55)"
    )


def detector_config_from_args(args: argparse.Namespace) -> "DetectorConfig":
    from kws.detect import DetectorConfig

    return DetectorConfig(
        hop_ms=args.hop_ms,
        smoothing=args.smoothing,
        refractory_ms=args.refractory_ms,
        threshold_offset=args.threshold_offset,
        vad=not args.no_vad,
        vad_floor_dbfs=args.vad_dbfs,
    )
