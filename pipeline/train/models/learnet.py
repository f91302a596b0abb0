"""LEARNet (Verma et al., IEEE TIP 2019), registered as `learnet`.

LEARNet follows the authors' Keras code (github.com/MonuVermaCV/LearNet, LEARNet_Model.py):
every convolution has stride 2, TensorFlow 'same' padding and ReLU. With the 112x112x3 input the
maps are 56 (stem) -> 28 -> 14 -> 7 in the branches, then 4 after the last convolution:

    stem      Conv_S   16 3x3                               112 -> 56
    pair k    A: a1 16 1x1 (stem) -> a2 32 3x3 -> a3 64 5x5  56 -> 28 -> 14 -> 7
              B: b1 16 1x1 (stem); BN(a1 + b1) -> b2 32 3x3; BN(a2 + b2) -> b3 64 5x5
    head      concat(a3, b3 of both pairs) = 256 x 7 x 7 -> BN -> Conv 256 3x3 (4x4)
              -> flatten (4096) -> dense 256 (ReLU) -> dropout 0.5 -> dense classes

1,866,053 trainable parameters for 5 classes (Keras also counts the 704 batch-norm running
statistics: 1,866,757). Differences from the Keras code, none architectural: the classifier
returns logits (softmax lives in the loss), and batch norm uses PyTorch's momentum (0.1) with
Keras' epsilon (1e-3): Keras' 0.99 running-average momentum lags badly over the few hundred steps a
LOSO fold trains for. Weights start as in Keras (Glorot-uniform kernels, zero biases).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MerError
from pipeline.train.models.gemm_conv import conv2d_relu
from pipeline.train.models.pretrained import weights_hint
from pipeline.train.models.registry import register_model

LEARNET_INPUT_SIZE = 112
BN_EPS = 1e-3  # Keras' batch-norm epsilon


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding along one axis: (before, after), output = ceil(size / stride).

    The extra pixel of an odd total goes after (bottom/right), as in TensorFlow, e.g. 112 with a
    3x3 kernel and stride 2 pads (0, 1) and 7 pads (1, 1).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d + ReLU with TensorFlow 'same' padding (asymmetric where TF pads asymmetrically); on the CPU
    with the portable kernels one matrix product over the batch (`conv2d_relu`, gemm_conv.py)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return conv2d_relu(x, self.weight, self.bias, self.stride)


class LearnetPair(nn.Module):
    """One pair of LEARNet's lateral accretive branches; returns the two 64-channel maps."""

    def __init__(self, in_channels: int = 16):
        super().__init__()
        self.a1 = SameConv2d(in_channels, 16, 1)
        self.a2 = SameConv2d(16, 32, 3)
        self.a3 = SameConv2d(32, 64, 5)
        self.b1 = SameConv2d(in_channels, 16, 1)
        self.bn1 = nn.BatchNorm2d(16, eps=BN_EPS)
        self.b2 = SameConv2d(16, 32, 3)
        self.bn2 = nn.BatchNorm2d(32, eps=BN_EPS)
        self.b3 = SameConv2d(32, 64, 5)

    def forward(self, stem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1 = self.a1(stem)
        a2 = self.a2(a1)
        a3 = self.a3(a2)
        b2 = self.b2(self.bn1(a1 + self.b1(stem)))
        b3 = self.b3(self.bn2(a2 + b2))
        return a3, b3


class LEARNet(nn.Module):
    """LEARNet for 112x112x3 dynamic images (other sizes run; the head then has another width)."""

    def __init__(self, num_classes: int, input_size: int = LEARNET_INPUT_SIZE, dropout: float = 0.5):
        super().__init__()
        self.stem = SameConv2d(3, 16, 3)
        self.pair1 = LearnetPair(16)
        self.pair2 = LearnetPair(16)
        self.bn = nn.BatchNorm2d(256, eps=BN_EPS)
        self.conv = SameConv2d(256, 256, 3)
        side = input_size
        for _ in range(5):  # stem, three branch convolutions, last convolution
            side = math.ceil(side / 2)
        self.fc1 = nn.Linear(256 * side * side, 256)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, num_classes)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        a1, b1 = self.pair1(stem)
        a2, b2 = self.pair2(stem)
        return self.conv(self.bn(torch.cat([a1, b1, a2, b2], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


@register_model(input_size=LEARNET_INPUT_SIZE)
def learnet(num_classes: int, pretrained: bool = False, input_size: int | None = None) -> LEARNet:
    """LEARNet from scratch: the authors published no weights (a local `weights` file still loads)."""
    if pretrained:
        raise MerError(f"there are no published pretrained LEARNet weights; {weights_hint('learnet')}")
    return LEARNet(num_classes, input_size or LEARNET_INPUT_SIZE)
