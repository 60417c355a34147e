import pytest

from count01.config import Config


@pytest.fixture
def tiny() -> Config:
    """A config that trains in about a second: enough to exercise every code path."""
    return Config(steps=60, n_seeds=2, batch_size=64, checkpoint_every=20, eval_size=512,
                  exhaustive_len=6, max_len=8, long_max_len=12)
