"""Shared fixtures: tiny PART models built in-process (no network), and synthetic audio."""

import numpy as np
import pytest
import torch

from modeling_part.tiny import build_tiny_part


def make_audio(seconds: float, seed: int = 0, sampling_rate: int = 16000) -> np.ndarray:
    """A speech-like test signal: a few harmonics with a moving pitch plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    signal = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.1 * signal + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def tiny_part():
    torch.manual_seed(0)
    model, processor = build_tiny_part("sensevoice")
    return model.eval(), processor


@pytest.fixture
def tiny_whisper_part():
    torch.manual_seed(0)
    model, processor = build_tiny_part("whisper", num_mel_bins=80)
    return model.eval(), processor


@pytest.fixture(scope="session")
def hub_checkpoints():
    """Hub-shaped component checkpoints (see tests/hub_fixtures.py), built once and cached on disk."""
    from hub_fixtures import build_hub_checkpoints

    return build_hub_checkpoints()
