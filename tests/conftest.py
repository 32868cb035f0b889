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


def shared_data_dir():
    """The real corpora (../shared/data beside the project, or $ATTNLAB_DATA_MIRROR)."""
    import os
    from pathlib import Path

    configured = os.environ.get("ATTNLAB_DATA_MIRROR")
    path = Path(configured) if configured else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path


@pytest.fixture
def mirror():
    import os

    path = shared_data_dir()
    if not (path / "multi30k" / "train.en.gz").exists():
        if os.environ.get("ATTNLAB_REQUIRE_DATA"):  # CI: a missing mirror is a failure, not a skip
            pytest.fail(f"real data mirror not found at {path}")
        pytest.skip(f"real data mirror not found at {path} (set ATTNLAB_DATA_MIRROR)")
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")
