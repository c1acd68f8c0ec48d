import os
import tempfile
from pathlib import Path

import pytest

# Tests build their tiny models (and the slow test its converted 270M) into one cache per machine,
# never into the user's ~/.cache; tests never download anything.
os.environ.setdefault("POSTTRAIN_CACHE", str(Path(tempfile.gettempdir()) / "posttrain-test-cache"))
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer():
    from posttrain.models import load_causal_lm

    return load_causal_lm("tiny")


@pytest.fixture(scope="session")
def local_ray():
    """One embedded local Ray for the in-process tests that need it (the CLI tests start their own)."""
    from posttrain import cluster

    ray = cluster.init(None)
    yield ray
    cluster.shutdown()
