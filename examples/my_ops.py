"An example plugin: `stacvs --import examples/my_ops.py ...` makes the op `conv_1x1` known to every command."
import torch.nn as nn
from stacvs.ops import register_op


@register_op('conv_1x1')
def conv_1x1(C, stride, affine):
    "ReLU → 1×1 convolution (strided in reduction cells) → BatchNorm, the DARTS op pattern."
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1, stride, bias=False), nn.BatchNorm2d(C, affine=affine))
