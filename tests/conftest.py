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


def pytest_report_header(config):
    """Which versions this run tests (`make test` runs both ends of setup.py's ranges)."""
    import peft
    import transformers

    return f"retrolm tests under torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
