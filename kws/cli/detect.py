"""``kws detect``: detect enrolled keywords in a microphone, an audio file or raw PCM on stdin."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kws.cli._common import (
    add_detector_arguments, add_device_arguments, add_model_arguments, detector_config_from_args, embedder_from_args,
)  # fmt: skip
from kws.events import EventClipConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="detect keywords in a stream (microphone, audio file, or raw PCM on stdin)",
        description="Detect the keywords of a bank. SOURCE is an audio file, '-' for raw 16-bit PCM "
        "on stdin, or absent for the microphone. Stop a live stream with Ctrl-C.",
    )
    p.add_argument("source", nargs="?", metavar="SOURCE", help="audio file, '-' for raw PCM on stdin; default: microphone")
    p.add_argument("--bank", required=True, metavar="BANK", help="keyword bank (made with `kws enroll`)")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    add_device_arguments(p, stdin=True)
    p.add_argument("--realtime", action="store_true", help="pace a file at real-time speed, like a live input")
    p.add_argument("--save-events", metavar="DIR", help="save the audio around each event (WAV + JSON sidecar) in DIR; "
                   "kws lists the files it saves in DIR/.kws-events.json and never deletes any other file")
    clip = EventClipConfig()
    p.add_argument("--event-preroll-ms", type=float, default=clip.preroll_ms,
                   help="audio saved before the window that fired (%(default)g)")
    p.add_argument("--event-postroll-ms", type=float, default=clip.postroll_ms,
                   help="audio saved after it (%(default)g; as long as the window, so that feedback sees the whole word pass)")
    p.add_argument("--save-events-max-mb", type=float, default=clip.max_mb,
                   help="size cap of the clips kws saved in DIR; its oldest go first (%(default)g)")  # fmt: skip
    add_detector_arguments(p)
    add_model_arguments(p, streaming=True)
    p.set_defaults(func=run)


def _source(args: argparse.Namespace):
    """The audio source SOURCE names; every check that needs no audio is done here, before
    the model is loaded."""
    from kws.audio import SAMPLE_RATE, check_audio_path
    from kws.errors import KwsError
    from kws.sources import MicrophoneSource, check_format, file_source, pcm_source

    if args.source is None:
        return MicrophoneSource(args.device, rate=args.rate, channels=args.channels)
    if args.device is not None:
        raise KwsError("--device only applies to the microphone; drop SOURCE to record from a device")
    if args.source == "-":
        rate = SAMPLE_RATE if args.rate is None else args.rate
        channels = 1 if args.channels is None else args.channels
        check_format(rate, channels, "raw PCM on stdin")
        return pcm_source(sys.stdin.buffer, rate=rate, channels=channels)
    if args.rate is not None or args.channels is not None:
        raise KwsError("--rate/--channels describe raw PCM on stdin or the device; an audio file has its own")
    return file_source(check_audio_path(args.source), realtime=args.realtime)


def run(args: argparse.Namespace) -> int:
    from kws.bank import KeywordBank
    from kws.detect import Detector

    cfg = detector_config_from_args(args)
    cfg.validate()
    # The bank and the source are checked before the model loads (seconds, hundreds of MB).
    KeywordBank.load(args.bank)
    source = _source(args)
    embedder = embedder_from_args(args)
    cfg = detector_config_from_args(args, embedder)
    bank = KeywordBank.load(args.bank, model_id=embedder.model_id)
    detector = Detector(embedder, bank, cfg)
    recorder = None
    if args.save_events:
        from kws.events import EventRecorder

        clip_cfg = EventClipConfig(args.event_preroll_ms, args.event_postroll_ms, args.save_events_max_mb)
        recorder = EventRecorder(
            args.save_events, embedder.window_samples, embedder.model_id, clip_cfg, hop_ms=cfg.hop_ms,
            keyword_windows=detector.keyword_windows,
        )
    started = time.monotonic()
    interrupted = failed = False
    try:
        for chunk in source:
            events = detector.process(chunk)
            for event in events:
                if args.json:
                    print(json.dumps(event.to_json()), flush=True)
                else:
                    print(f"{event.time:9.2f} s  {event.keyword}  (score {event.score:.3f}, threshold {event.threshold:.3f})", flush=True)
            if recorder is not None:
                recorder.feed(chunk, events)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        # The error is reported (by the caller) after what the stream gave so far is kept.
        failed = True
        raise
    finally:
        if recorder is not None:
            recorder.close()
            print(f"kws detect: {len(recorder.written)} event clip(s) saved in {args.save_events}", file=sys.stderr)
        _summary(detector, source, time.monotonic() - started, interrupted, failed)
    if detector.stats.hops == 0 and not interrupted:
        from kws.errors import AudioError

        raise AudioError(f"{args.source}: less than one hop ({cfg.hop_ms:g} ms) of audio: nothing was scored")
    return 0


def _summary(detector, source, wall_s: float, interrupted: bool, failed: bool = False) -> None:
    st = detector.stats
    parts = [
        f"{st.seconds:.1f} s of audio in {wall_s:.1f} s",
        f"{st.events} event(s)",
        f"{st.embedded}/{st.hops} windows embedded",
    ]
    if hasattr(source, "overflows"):
        parts.append(f"{source.overflows} input overflow(s), {source.dropped} dropped block(s)")
    head = "stopped by an error" if failed else "stopped" if interrupted else "done"
    print(f"kws detect: {head}: " + ", ".join(parts), file=sys.stderr, flush=True)
