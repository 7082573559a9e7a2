"""kws: few-shot keyword spotting on speech embeddings.

Importing ``kws`` is light: it does not import torch, so the ONNX runtime path
(``load_embedder(..., backend="onnx")``) works where torch is not installed.
"""

from kws.embedder import Embedder, load_embedder
from kws.errors import KwsError

__version__ = "0.1.0"
__all__ = ["Embedder", "KwsError", "load_embedder", "__version__"]
