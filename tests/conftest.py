import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IDM_VTON_SHARED", REPO.parent / "shared"))


def require_shared(path: Path) -> None:
    """Skip when a fixture folder is absent, but fail in CI, where ../shared is always present."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"fixture folder {path} is missing in CI")
        pytest.skip(f"fixtures not found at {path}")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    require_shared(SHARED)
    return SHARED


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Reference tensors were produced with one compute thread; keep tests reproducible.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
