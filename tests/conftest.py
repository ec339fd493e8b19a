"""Test environment: every cache and home away from ~, Prefect on a temp home, the hub offline."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before prefect/transformers/yfinance are imported by any test module.
_TMP_HOME = Path(tempfile.mkdtemp(prefix="hitchhiker-tests-"))
os.environ["HOME"] = str(_TMP_HOME)  # DuckDB (~/.duckdb), yfinance (~/.cache/py-yfinance) and the rest land here
os.environ["XDG_CACHE_HOME"] = str(_TMP_HOME / ".cache")
os.environ["PREFECT_HOME"] = str(_TMP_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_TMP_HOME / "hf")
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("HITCHHIKER_DB", None)
# The default small model is built once per HITCHHIKER_HOME: a fresh one per test session (as in CI), unless the
# developer points it at a cache that already holds the model.
os.environ.setdefault("HITCHHIKER_HOME", str(_TMP_HOME / "hitchhiker"))

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HITCHHIKER_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recorded data set beside the checkout (../shared/data); its absence is an error, not a skip."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        raise RuntimeError(f"shared data not found at {SHARED_DATA}; set HITCHHIKER_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def db_file(tmp_path) -> Path:
    """A fresh database path in the test's temp dir."""
    return tmp_path / "test.duckdb"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (tests that run flows ask for it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: GPU tests cannot run either
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
