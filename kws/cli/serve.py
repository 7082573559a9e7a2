"""``kws serve``: a keyword service for Home Assistant (Wyoming), many streams in one process."""

from __future__ import annotations

import argparse
import sys

from kws.cli._common import add_detector_arguments, add_model_arguments, detector_config_from_args, embedder_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a bank to Home Assistant (Wyoming) and a web page: many streams, one process",
        description="Serve the keywords of BANK as a Wyoming wake-word service: add it to Home Assistant "
        "with the Wyoming integration (host and port of this machine). One process holds the model once "
        "and serves many streams; changes to BANK (kws enroll, kws feedback, kws bank remove) apply to "
        "new streams without a restart. The same process serves a web page on --http-port (enrol by "
        "voice, live scores and detections, 'not the keyword' feedback) behind a token printed at start. "
        "Both listen on loopback unless --host / --wyoming-host say otherwise.",
    )
    p.add_argument("--bank", required=True, metavar="BANK", help="keyword bank (made with `kws enroll`, or a new file the web page enrols into)")
    p.add_argument("--port", type=int, default=10400, help="Wyoming port (default 10400)")
    p.add_argument(
        "--wyoming-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the Wyoming port (default 127.0.0.1; 0.0.0.0 for Home Assistant on another "
        "machine: Wyoming has no authentication, anyone on that network can then stream to it)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address of the web page (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=10480, help="port of the web page (default 10480)")
    p.add_argument("--no-web", action="store_true", help="serve Wyoming only, no web page")
    p.add_argument("--token", help="the web page's token (default: a random one, printed at start)")
    p.add_argument("--max-connections", type=int, default=64, help="open Wyoming connections at most (default 64)")
    add_detector_arguments(p)
    add_model_arguments(p, streaming=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from kws.serve import KwsServer, ServeConfig, WyomingLimits
    from kws.serve.server import is_loopback

    embedder = embedder_from_args(args)
    cfg = ServeConfig(
        wyoming_host=args.wyoming_host,
        wyoming_port=args.port,
        web_host=args.host,
        web_port=None if args.no_web else args.http_port,
        token=args.token,
        detector=detector_config_from_args(args, embedder),
        limits=WyomingLimits(max_connections=args.max_connections),
    )
    server = KwsServer(embedder, args.bank, cfg)

    async def main() -> None:
        await server.start()
        names = ", ".join(server.store.current().names) or "none yet (enrol some on the web page or with `kws enroll`)"
        print(f"kws serve: Wyoming on tcp://{args.wyoming_host}:{server.wyoming_port}, keywords: {names}", file=sys.stderr, flush=True)
        if server.web_url is not None:
            print(f"kws serve: web page on {server.web_url}", file=sys.stderr, flush=True)
        if not is_loopback(args.wyoming_host):
            print("kws serve: warning: the Wyoming port is open to the network and has no authentication", file=sys.stderr)
        await server.serve_forever()

    asyncio.run(main())
    return 0
