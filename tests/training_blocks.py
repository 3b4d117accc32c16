"""Neighbour of training_cases.py: imported by it the way a user's model file imports its own modules."""

from __future__ import annotations

from torch import nn


def sigmoid_stack(d_in: int, width: int, depth: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.Sigmoid()]
    return layers
