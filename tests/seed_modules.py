"""The seed documents' PyTorch modules, rebuilt from their printed text with SPEC section 6's fixes.

The printed code lost some lines (the BatchNorms, SE's ReLU and h_sigmoid); what is here is the
faithful reading SPEC 6 gives.  Class names are the seeds' own, so whole-model references can use
them as the seeds' YAMLs name them.

Seed 000 (YOLOv5 + MobileNetV3):
- `conv_bn_hswish(c1, c2, stride)`: conv 3x3 (padding 1, no bias) -> BN -> h_swish; keys conv, bn.
- `SELayer(channel, reduction=4)`: avgpool -> Linear(c, c // 4) -> ReLU -> Linear(c // 4, c) -> h_sigmoid, times x;
  keys fc.0, fc.2 (no rounding of c // 4).
- `MobileNetV3_InvertedResidual(inp, oup, hidden_dim, kernel_size, stride, use_se, use_hs)` (alias `MobileNetV3`,
  the YAMLs' name): `conv` Sequential, see the class.
- `StemBlock(c1, c2, k=3, s=2)`: stem_1, stem_2a, stem_2b, stem_3 (ultralytics Conv = conv-BN-SiLU), stem_2p max-pool.

Seed 004 (YOLOv8 + MobileNetV2):
- `ConvNormReLUBlock`: conv (bias False), bn, activation (ReLU6 by default).
- `InverseResidualBlock(in, out, expansion_factor, stride)`: conv1 (ConvNormReLUBlock or Identity when
  in == hidden), depthwise_conv, conv2 (no activation); residual iff stride 1 and in == out.
- `MobileNetV2()`: `model` Sequential (0 = stem, 1..17 = blocks); forward returns the 4 maps
  [stride 4: 24 ch, stride 8: 32, stride 16: 96, stride 32: 320]; `width_list` = their channels.
"""
from __future__ import annotations

import torch_reference  # noqa: F401  (stubs torchvision before ultralytics is imported)

import torch
from torch import nn
from ultralytics.nn.modules import Conv

__all__ = ["h_sigmoid", "h_swish", "SELayer", "conv_bn_hswish", "MobileNetV3_InvertedResidual", "MobileNetV3",
           "StemBlock", "ConvNormReLUBlock", "InverseResidualBlock", "MobileNetV2"]


# ----------------------------------------------------------------------------------------------- seed 000

class h_sigmoid(nn.Module):  # noqa: N801  (the seed's name)
    def __init__(self, inplace: bool = True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):  # noqa: N801
    def __init__(self, inplace: bool = True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class SELayer(nn.Module):
    def __init__(self, channel: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel),
            h_sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y


class conv_bn_hswish(nn.Module):  # noqa: N801
    def __init__(self, c1: int, c2: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = h_swish()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class MobileNetV3_InvertedResidual(nn.Module):  # noqa: N801
    """`conv` indices: inp == hidden: 0 dw, 1 BN, 2 act, 3 SE (or an empty Sequential), 4 pw, 5 BN;
    else: 0 pw, 1 BN, 2 act, 3 dw, 4 BN, 5 SE (or empty), 6 act, 7 pw, 8 BN.  SE comes before the
    activation in the expand branch (not torchvision's order)."""

    def __init__(self, inp: int, oup: int, hidden_dim: int, kernel_size: int, stride: int, use_se, use_hs):
        super().__init__()
        assert stride in (1, 2)
        self.identity = stride == 1 and inp == oup
        pad = (kernel_size - 1) // 2

        def act():
            return h_swish() if use_hs else nn.ReLU(inplace=True)

        def se():
            return SELayer(hidden_dim) if use_se else nn.Sequential()

        if inp == hidden_dim:
            self.conv = nn.Sequential(
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size, stride, pad, groups=hidden_dim, bias=False),
                nn.BatchNorm2d(hidden_dim),
                act(),
                se(),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            )
        else:
            self.conv = nn.Sequential(
                nn.Conv2d(inp, hidden_dim, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden_dim),
                act(),
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size, stride, pad, groups=hidden_dim, bias=False),
                nn.BatchNorm2d(hidden_dim),
                se(),
                act(),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            )

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.identity else y


MobileNetV3 = MobileNetV3_InvertedResidual  # the YAMLs' name


class StemBlock(nn.Module):
    """Defined by seed 000, used by neither of its YAMLs.  `Conv` is ultralytics'/yolov5's conv-BN-SiLU.

    The seed passes `act` positionally as Conv's 7th argument, which yolov5 v6.0's Conv took as `act`;
    here it is passed by keyword (newer Convs put `d` there)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2, p=None, g: int = 1, act=True):
        super().__init__()
        self.stem_1 = Conv(c1, c2, k, s, p, g, act=act)
        self.stem_2a = Conv(c2, c2 // 2, 1, 1, 0)
        self.stem_2b = Conv(c2 // 2, c2, 3, 2, 1)
        self.stem_2p = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem_3 = Conv(c2 * 2, c2, 1, 1, 0)

    def forward(self, x):
        stem_1_out = self.stem_1(x)
        stem_2b_out = self.stem_2b(self.stem_2a(stem_1_out))
        stem_2p_out = self.stem_2p(stem_1_out)
        return self.stem_3(torch.cat((stem_2b_out, stem_2p_out), 1))


# ----------------------------------------------------------------------------------------------- seed 004

class ConvNormReLUBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool = False, activation=nn.ReLU6):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                              bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = activation()

    def forward(self, x):
        return self.activation(self.bn(self.conv(x)))


class InverseResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, expansion_factor: int = 6, stride: int = 1):
        super().__init__()
        hidden_channels = in_channels * expansion_factor
        self.residual = in_channels == out_channels and stride == 1
        self.conv1 = (ConvNormReLUBlock(in_channels, hidden_channels, (1, 1))
                      if in_channels != hidden_channels else nn.Identity())
        self.depthwise_conv = ConvNormReLUBlock(hidden_channels, hidden_channels, (3, 3), stride=stride, padding=1,
                                                groups=hidden_channels)
        self.conv2 = ConvNormReLUBlock(hidden_channels, out_channels, (1, 1), activation=nn.Identity)

    def forward(self, x):
        identity = x
        x = self.conv2(self.depthwise_conv(self.conv1(x)))
        return x + identity if self.residual else x


class MobileNetV2(nn.Module):
    """Seed 004's backbone: returns [stride 4 (24 ch), 8 (32), 16 (96), 32 (320)].

    The printed forward appends the last map a fifth time, which breaks its own YAML's Concat indices;
    SPEC 6 takes the 4-map reading.  For each channel count the last layer producing it wins (the
    stem's 32 channels are overwritten by the stride-8 blocks)."""

    # in channels, expansion factor, out channels, repeat, stride
    config = (
        (32, 1, 16, 1, 1),
        (16, 6, 24, 2, 2),
        (24, 6, 32, 3, 2),
        (32, 6, 64, 4, 2),
        (64, 6, 96, 3, 1),
        (96, 6, 160, 3, 2),
        (160, 6, 320, 1, 1),
    )

    def __init__(self, n_classes: int = 1000, input_channel: int = 3, dropout: float = 0.2):
        super().__init__()
        self.model = nn.Sequential(ConvNormReLUBlock(input_channel, 32, (3, 3), stride=2, padding=1))
        for in_channels, expansion_factor, out_channels, repeat, stride in self.config:
            for _ in range(repeat):
                self.model.append(InverseResidualBlock(in_channels, out_channels, expansion_factor, stride))
                in_channels, stride = out_channels, 1
        self.index = [24, 32, 96, 320]
        # The seed probes a 640x640 image in train mode (which also moves the BN statistics); the channels do
        # not depend on the size or the mode, so a small eval-mode probe gives the same list, state untouched.
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self.width_list = [i.size(1) for i in self.forward(torch.zeros(1, input_channel, 64, 64))]
        self.train(was_training)

    def forward(self, x):
        results = [None] * len(self.index)
        for layer in self.model:
            x = layer(x)
            if x.size(1) in self.index:
                results[self.index.index(x.size(1))] = x
        return results
