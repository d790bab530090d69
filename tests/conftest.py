import os

import pytest
import torch

from retrolm.tiny import TINY_ARCHITECTURES, build_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One saved tiny random model per supported architecture family: {arch: directory}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(str(root / arch), arch, seed=1) for arch in TINY_ARCHITECTURES}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



@pytest.fixture(autouse=True)
def _environment():
    """Each test's environment changes end with it: an in-process training run sets RANK, MASTER_PORT, ... for
    its one-process group, and a subprocess started by a later test must not inherit them (its group would try
    the port that the first one still holds)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
