"""``kws export``: write the model as ONNX (and int8 ONNX), checked against PyTorch."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the model to ONNX (optionally also int8), with a parity check",
        description=(
            "Export the whole embedder (log-mel front-end + encoder) to one ONNX file: input 'waveform' "
            "float32 (batch, samples) at 16 kHz, output 'embedding' float32 (batch, dim), unit norm. "
            "The file is written only if ONNX Runtime matches PyTorch on speech clips; with --int8 an "
            "int8 variant OUT.int8.onnx is written too, only if it stays close to fp32. "
            "A model over a pretrained stem (speech-embedding) is written with its stem in one graph "
            "(batch 1; no PyTorch or stem package needed to run it), or with --head-only as its head alone "
            "(what kws bundles; it streams frame by frame over the installed stem). "
            "See export/README.md for the contract."
        ),
    )
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="checkpoint to export, or a bundled model's name (default: the bundled scratch model)",
    )
    p.add_argument("--int8", action="store_true", help="also write an int8 (static QDQ) variant OUT.int8.onnx")
    p.add_argument(
        "--head-only",
        action="store_true",
        help="a model over a stem: write its head alone (input 'frames', the stem's frames)",
    )
    p.add_argument(
        "--clips",
        metavar="DIR",
        help="folder of speech clips for the parity check and int8 calibration "
        "(default: training-vocabulary words spoken by espeak-ng)",
    )
    p.add_argument("--max-clips", type=int, default=64, metavar="N", help="clips to use from --clips (default: 64)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: 17)")
    p.add_argument(
        "--tolerance", type=float, metavar="X", help="max abs embedding difference allowed vs PyTorch (default: 1e-4)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kws.errors import KwsError
    from kws.export import (
        OPSET,
        PARITY_TOLERANCE,
        clips_from_folder,
        export_composed,
        export_head,
        export_onnx,
        int8_path,
        load_source_model,
        quantize_int8,
        synthetic_clips,
    )

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise KwsError(f"{out}: the output file must end in .onnx")
    if args.max_clips < 1:
        raise KwsError("--max-clips must be at least 1")
    from kws.model import HeadModel

    model = load_source_model(args.checkpoint)
    window = model.cfg.window_samples
    clips = clips_from_folder(args.clips, args.max_clips, window) if args.clips else synthetic_clips(window=window)
    if isinstance(model, HeadModel):
        if args.int8:
            raise KwsError("--int8 is for scratch models; a model over a stem is exported in fp32")
        tolerance = PARITY_TOLERANCE if args.tolerance is None else args.tolerance
        if args.head_only:
            report = export_head(model, out, clips, opset=args.opset or OPSET, tolerance=tolerance)
            what = f"the head of model {model.model_id()}; it runs over the installed {model.cfg.stem} stem"
        else:
            report = export_composed(model, out, clips, tolerance=tolerance)
            what = f"model {model.model_id()}: {model.cfg.stem} stem and head in one graph, batch 1"
        print(
            f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {what}); max abs difference to "
            f"the PyTorch chain on {report.clips} clips: {report.max_abs_diff:.1e}"
        )
        return 0
    report = export_onnx(
        model,
        out,
        clips,
        opset=args.opset or OPSET,
        tolerance=PARITY_TOLERANCE if args.tolerance is None else args.tolerance,
    )
    print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, model {model.model_id()}); "
        f"max abs difference to PyTorch on {report.clips} clips: {report.max_abs_diff:.1e}"
    )
    if args.int8:
        q = quantize_int8(out, int8_path(out), clips)
        print(
            f"wrote {q.path} ({q.size_bytes / 1e6:.2f} MB, int8); cosine to fp32 on {q.clips} clips: "
            f"min {q.min_cosine:.4f}, mean {q.mean_cosine:.4f}"
        )
    return 0
