import importlib.util
from pathlib import Path

import pytest

from pfedest.datasets import make_shifted_clients

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def federated():
    """A small non-IID federation: 6 clients, unequal sizes, rows grouped by client (as the tests were written)."""
    return make_shifted_clients(n_clients=6, n_samples_per_client=(15, 40), n_features=5, n_classes=3,
                                shuffle=False, random_state=0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores shared with other jobs: more threads only slow the tiny models of the tests down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)`` imports ``examples/<name>.py`` as a module (its ``main`` not run)."""

    def load(name):
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
