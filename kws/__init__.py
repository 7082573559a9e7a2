"""kws: few-shot keyword spotting on speech embeddings.

:class:`Spotter` is the one-object API (enrol, detect, feedback); the modules
beside it are the parts it calls, each usable alone (ARCHITECTURE.md maps them).

Importing ``kws`` is light: it does not import torch, so the ONNX runtime path
(``load_embedder(..., backend="onnx")``) works where torch is not installed.
"""

from kws.embedder import Embedder, load_embedder
from kws.errors import KwsError
from kws.spotter import Spotter

__version__ = "0.1.0"
__all__ = ["Embedder", "KwsError", "Spotter", "load_embedder", "__version__"]
