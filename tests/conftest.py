"""Shared fixtures. Real data lives in ../shared/data beside the repository (override with the
environment variable DERAIN_DATA); tests that need it skip cleanly when it is absent."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = Path(os.environ.get("DERAIN_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path of the shared real data; skips the test when it is not there."""
    if not (SHARED_DATA / "Rain100L" / "input").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set DERAIN_DATA)")
    return SHARED_DATA


def digest(path):
    """SHA-256 of a file, for comparing files in asserts: when two large files differ, pytest's
    explanation of a raw bytes mismatch is a character diff that, with the environment variable
    CI set (no truncation), runs for hours; two digests print in one line."""
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
