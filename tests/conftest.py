import pytest
import torch

from attnlab.config import ModelConfig

# Test models are tiny: one thread avoids OpenMP spin-waiting, which on a busy 2-core
# machine made small ops ~400x slower (seen here: 18 s against 0.04 s for one search test).
torch.set_num_threads(1)

POSITIONALS = ["sinusoidal", "learned", "rope", "alibi", "none"]
PLACEMENTS = ["post", "pre"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides) -> ModelConfig:
    """A small model without dropout, for exact comparisons."""
    values = dict(n_layers=2, d_model=32, d_ff=64, n_heads=4, dropout=0.0)
    values.update(overrides)
    return ModelConfig(**values)
