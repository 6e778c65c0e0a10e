import os
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: Reference cases shipped with the tests (reference tensors and masks, see their READMEs).
FIXTURES = REPO / "tests" / "fixtures"
GOLDEN = Path(os.environ.get("IDM_VTON_GOLDEN", FIXTURES / "golden"))
GOLDEN_MASK = FIXTURES / "golden_mask"
#: The example inputs that ship with the package (public-domain photos, drawings made here).
EXAMPLES = REPO / "src" / "idm_vton" / "examples"
#: Optional extra: VITON-HD example photos beside the clone (non-commercial, never committed).
SHARED = Path(os.environ.get("IDM_VTON_SHARED", REPO.parent / "shared"))


def example_person() -> Image.Image:
    """The repository's example person photo (512 x 512, square)."""
    return Image.open(EXAMPLES / "person.jpg").convert("RGB")


def example_person_3x4() -> Image.Image:
    """The example photo cropped to the 3:4 shape of try-on datasets, at VITON-HD's 768 x 1024."""
    photo = example_person()
    return photo.crop((64, 0, 448, 512)).resize((768, 1024), Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The optional VITON-HD example photos; tests that need them skip where they are absent."""
    if not (SHARED / "examples").is_dir():
        pytest.skip(f"optional VITON-HD examples not found at {SHARED}/examples")
    return SHARED


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Reference tensors were produced with one compute thread; keep tests reproducible.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
