"""``kws serve``: a keyword service for Home Assistant (Wyoming) in one process.

One embedder serves many streams: :class:`~kws.serve.engine.BatchEngine` embeds
the due windows of all streams in batches, each :class:`~kws.serve.engine.Stream`
keeps its own window and trigger, and :mod:`kws.serve.wyoming` speaks the
Wyoming wake-word protocol. Importing this package needs the ``wyoming`` package.
"""

from kws.serve.engine import BankStore, BatchEngine, Stream
from kws.serve.server import KwsServer, ServeConfig
from kws.serve.wyoming import WyomingLimits

__all__ = ["BankStore", "BatchEngine", "KwsServer", "ServeConfig", "Stream", "WyomingLimits"]
