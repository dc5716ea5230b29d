"""Test configuration. Triton runs on the CPU only through its interpreter, and the variable must be set before
any ``@triton.jit`` function is defined, i.e. before ``rdpo_zoo.kernels`` is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never load whatever plugins happen to be installed in the environment: only the built-ins (and what a test
# registers itself).
os.environ.setdefault("RDPO_ZOO_PLUGINS", "builtin")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("thorough", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
