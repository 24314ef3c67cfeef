"""A torch encoder the size of tftrt.zoo.encoder (12 layers, hidden 768, 12 heads, seq 128),
post-norm like the Keras model, GELU feed-forward; the PyTorch peer in bench_e2e.py."""

import torch
from torch import nn


class TorchEncoder(nn.Module):
    def __init__(self, layers=12, hidden=768, heads=12, ffn=3072):
        super().__init__()
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=False,
                                           layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)
