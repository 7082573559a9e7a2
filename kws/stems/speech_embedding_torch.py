"""The speech-embedding stem in PyTorch, so that it can be fine-tuned with kws's head.

:class:`TorchSpeechEmbedding` is ``embedding_model.onnx`` (the stem, not its mel
front-end, which stays on ONNX Runtime) rebuilt layer by layer from the ONNX graph,
its weights read from the graph's initializers: 20 convolutions (batch norm already
fused into them), each but the last followed by a leaky ReLU and a floor at −0.4, and
five max-pools. Its convolutions are unpadded in time and its pools halve time three
times, so it is fully convolutional in time with a stride of 8 mel frames, the
stem's own: run over a whole window of mel frames it computes every stem frame of
the window at once, each equal to the ONNX model run on that frame's 76 mel frames,
at a sixth of the cost of running them one by one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kws.errors import CheckpointError
from kws.stems.speech_embedding import N_MELS, STRIDE, WINDOW_FRAMES, model_files

__all__ = ["TorchSpeechEmbedding"]


class _Floor(nn.Module):
    """``max(x, floor)``: the ONNX graph's ``Max`` with a constant after every activation."""

    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=self.floor)


class TorchSpeechEmbedding(nn.Module):
    """Scaled mel ``(batch, frames, 32)`` → stem frames ``(batch, T, 96)``, ``T = 1 + (frames - 76) // 8``.

    Stem frame ``t`` is the stem over mel frames ``8t … 8t + 75``. The weights start
    as the installed ONNX model's (a checkpoint's state dict may replace them).
    """

    def __init__(self) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(model_files()[1])).graph
        consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        layers: list[nn.Module] = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Conv":
                weight = consts[node.input[1]]
                top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
                if (top, bottom) != (0, 0) or left != right or attrs.get("strides", [1, 1]) != [1, 1]:
                    raise CheckpointError(f"{model_files()[1]}: unexpected convolution {node.name}")
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], padding=(0, left),
                                 bias=len(node.input) > 2)  # fmt: skip
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(weight.copy()))
                    if conv.bias is not None:
                        conv.bias.copy_(torch.from_numpy(consts[node.input[2]].copy()))
                layers.append(conv)
            elif node.op_type == "LeakyRelu":
                layers.append(nn.LeakyReLU(attrs["alpha"]))
            elif node.op_type == "Max":
                layers.append(_Floor(float(np.asarray(consts[node.input[1]]).item())))
            elif node.op_type == "MaxPool":
                layers.append(nn.MaxPool2d(tuple(attrs["kernel_shape"]), tuple(attrs["strides"])))
            elif node.op_type != "Reshape":  # the graph's reshapes only move the channel axis
                raise CheckpointError(f"{model_files()[1]}: unexpected operator {node.op_type}")
        self.layers = nn.Sequential(*layers)

    @property
    def convs(self) -> list[nn.Conv2d]:
        """The convolutions, first to last."""
        return [m for m in self.layers if isinstance(m, nn.Conv2d)]

    def train_last(self, n: int) -> None:
        """Let only the last ``n`` convolutions learn (all of them if ``n`` is their number or more)."""
        convs = self.convs
        for i, conv in enumerate(convs):
            conv.requires_grad_(i >= len(convs) - n)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.shape[-1] != N_MELS or mel.shape[-2] < WINDOW_FRAMES:
            raise ValueError(f"expected mel (batch, >= {WINDOW_FRAMES}, {N_MELS}), got {tuple(mel.shape)}")
        # Frames past the last whole stride would only give a partial stem frame.
        usable = WINDOW_FRAMES + STRIDE * ((mel.shape[-2] - WINDOW_FRAMES) // STRIDE)
        x = self.layers(mel[:, None, :usable])  # (batch, 96, T, 1)
        return x[..., 0].transpose(1, 2)
