"""What the Omniglot tests share: where the real archives are, and a fixture that keeps every
test away from the user's cache and the network (Chapter 2)."""
from pathlib import Path

import pytest

from mlbook.data import omniglot

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
SMALL = ("images_background_small1.zip", "images_background_small2.zip")
needs_shared = pytest.mark.skipif(not all((SHARED / n).is_file() for n in SMALL),
                                  reason=f"the real Omniglot archives are not in {SHARED}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test reads the user's cache or the network."""
    monkeypatch.setenv("MLBOOK_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("MLBOOK_OMNIGLOT", raising=False)
    monkeypatch.setattr(omniglot, "BASE_URL", "http://127.0.0.1:9/")  # a closed port: fails at once
