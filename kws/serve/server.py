"""``kws serve``: one process, one embedder, many streams (Wyoming for Home Assistant)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field

from wyoming.error import Error

from kws.detect import DetectorConfig
from kws.embedder import Embedder
from kws.errors import KwsError
from kws.serve.engine import BankStore, BatchEngine
from kws.serve.wyoming import Connection, WyomingLimits

log = logging.getLogger(__name__)

# The port Home Assistant's Wyoming integration suggests for wake-word services.
WYOMING_PORT = 10400
WEB_PORT = 10480


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """Where and how ``kws serve`` listens.

    Attributes:
        wyoming_host: address of the Wyoming port. Wyoming has no authentication,
            so anything but loopback must be asked for by name (and is warned about).
        wyoming_port: its TCP port (0: any free port).
        web_host: address of the web page (always behind the token).
        web_port: its TCP port (0: any free port; ``None``: no web page).
        token: what the page's API and WebSocket require; ``None``: a random one per process.
        detector: the streaming settings every stream uses.
        limits: what one Wyoming connection may send.
        max_backlog: hops one stream may queue before its client is slowed down.
    """

    wyoming_host: str = "127.0.0.1"
    wyoming_port: int = WYOMING_PORT
    web_host: str = "127.0.0.1"
    web_port: int | None = WEB_PORT
    token: str | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    limits: WyomingLimits = field(default_factory=WyomingLimits)
    max_backlog: int = 50


class KwsServer:
    """The keyword service: start it with :meth:`start`, stop it with :meth:`close`.

    Args:
        embedder: the model every stream shares.
        bank_path: the keyword bank (re-read when it changes, for new streams).
        cfg: addresses, detector settings and limits.
    """

    def __init__(self, embedder: Embedder, bank_path: str | os.PathLike, cfg: ServeConfig = ServeConfig()) -> None:
        self.cfg = cfg
        self.store = BankStore(bank_path, embedder.model_id, embedder.dim)
        self.engine = BatchEngine(embedder, cfg.detector, max_backlog=cfg.max_backlog)
        self.connections: dict[asyncio.Task, Connection] = {}
        self.token = cfg.token or secrets.token_urlsafe(16)
        self._web_runner = None
        self.web_port: int | None = None
        self._server: asyncio.Server | None = None
        self._engine_task: asyncio.Task | None = None

    @property
    def wyoming_port(self) -> int:
        """The port the Wyoming service listens on (the real one when 0 was asked for)."""
        if self._server is None:
            raise KwsError("the server is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        host = self.cfg.wyoming_host
        if not is_loopback(host):
            log.warning(
                "the Wyoming port listens on %s: Wyoming has no authentication, so anyone who can reach "
                "this address can stream audio to it and learn your keywords' names",
                host,
            )
        self._engine_task = asyncio.create_task(self.engine.run(), name="kws batch engine")
        try:
            self._server = await asyncio.start_server(
                self._on_connect, host, self.cfg.wyoming_port, limit=self.cfg.limits.max_header_bytes
            )
        except OSError as exc:
            self._engine_task.cancel()
            raise KwsError(
                f"cannot listen on {host}:{self.cfg.wyoming_port} ({exc.strerror}); choose another --port"
            ) from exc
        log.info("Wyoming wake-word service on %s:%d", host, self.wyoming_port)
        if self.cfg.web_port is not None:
            await self._start_web()

    async def _start_web(self) -> None:
        from aiohttp import web

        from kws.serve.web import WebApp

        self.web = WebApp(self.engine, self.store, self.token)
        self._web_runner = web.AppRunner(self.web.app(), access_log=None)
        await self._web_runner.setup()
        site = web.TCPSite(self._web_runner, self.cfg.web_host, self.cfg.web_port)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise KwsError(
                f"cannot listen on {self.cfg.web_host}:{self.cfg.web_port} ({exc.strerror}); choose another --http-port"
            ) from exc
        self.web_port = self._web_runner.addresses[0][1]

    @property
    def web_url(self) -> str | None:
        """The page's address with its token (``None`` without a web page)."""
        if self.web_port is None:
            return None
        host = self.cfg.web_host if ":" not in self.cfg.web_host else f"[{self.cfg.web_host}]"
        return f"http://{host}:{self.web_port}/?token={self.token}"

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self.engine, self.store, self.cfg.limits, reader, writer)
        if len(self.connections) >= self.cfg.limits.max_connections:
            log.warning("refusing a Wyoming connection: %d already open", len(self.connections))
            await conn.refuse(Error(text="too many connections; try again later", code="busy").event())
            return
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = conn
        try:
            await conn.run()
        except asyncio.CancelledError:
            # Only close() cancels a connection: asyncio would log it as an error.
            log.info("a Wyoming connection was cut off at shutdown")
        finally:
            self.connections.pop(task, None)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop listening, end every connection (as if its client had hung up), stop the engine."""
        if self._server is not None:
            self._server.close()
        if self._web_runner is not None:
            await self._web_runner.cleanup()
            self._web_runner = None
        for conn in self.connections.values():
            conn.reader.feed_eof()
        if self.connections:
            # The engine keeps running meanwhile: a connection waiting for its
            # stream's last hops gets them and ends by itself.
            _, stuck = await asyncio.wait(list(self.connections), timeout=timeout_s)
            for task in stuck:
                task.cancel()
        if self._engine_task is not None:
            self._engine_task.cancel()
            await asyncio.gather(self._engine_task, return_exceptions=True)

    async def serve_forever(self) -> None:
        """Serve until cancelled (starting first if :meth:`start` was not called)."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.close()
