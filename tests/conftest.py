"""Shared fixtures: tiny seeded models and batches, global seeding, a deterministic hypothesis."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import nn

# Every property test replays the same examples on every run (no example database, no wall-clock
# deadline: the machine is shared). Override with HYPOTHESIS_PROFILE=<name> for exploration.
settings.register_profile("sparsetrain", derandomize=True, database=None, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sparsetrain"))

# Tiny tensors on a shared 2-core machine: intra-op threads only add contention (a tiny MLP step
# takes ~50 ms with 2 threads under load, ~3 ms with 1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed torch, numpy and random before every test."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def tiny_mlp() -> nn.Sequential:
    """Linear 8→6 → ReLU → Linear 6→4 (weights 48 + 24), seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


@pytest.fixture
def tiny_cnn() -> nn.Sequential:
    """Conv2d 1→3 (3x3) → ReLU → Flatten → Linear 48→4, for 1x6x6 inputs; seeded."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, kernel_size=3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)
    )


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """16 inputs of size 8 for ``tiny_mlp`` and class labels in ``[0, 4)``; seeded."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


@pytest.fixture
def image_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 single-channel 6x6 images for ``tiny_cnn`` and labels in ``[0, 4)``; seeded."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
