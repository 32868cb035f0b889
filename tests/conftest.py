import shutil

import pytest
import torch

from attnlab.config import ModelConfig

# Test models are tiny: one thread avoids OpenMP spin-waiting, which on a busy 2-core
# machine made small ops ~400x slower (seen here: 18 s against 0.04 s for one search test).
torch.set_num_threads(1)

POSITIONALS = ["sinusoidal", "learned", "rope", "alibi", "none"]
PLACEMENTS = ["post", "pre"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides) -> ModelConfig:
    """A small model without dropout, for exact comparisons."""
    values = dict(n_layers=2, d_model=32, d_ff=64, n_heads=4, dropout=0.0)
    values.update(overrides)
    return ModelConfig(**values)


def shared_data_dir():
    """The real corpora (../shared/data beside the project, or $ATTNLAB_DATA_MIRROR)."""
    import os
    from pathlib import Path

    configured = os.environ.get("ATTNLAB_DATA_MIRROR")
    path = Path(configured) if configured else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path


def upstream_reachable() -> bool:
    """Whether the corpora's public sources answer (a fresh clone on a machine with internet)."""
    import socket

    try:
        socket.create_connection(("raw.githubusercontent.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def real_mirror() -> str:
    """Where tests read the real corpora: the mirror folder, or "" (the normal data path: the
    public sources) when no mirror is configured and the network is reachable; else a skip
    (a failure in CI, which must have the data)."""
    import os

    path = shared_data_dir()
    if (path / "multi30k" / "train.en.gz").exists():
        return str(path)
    if os.environ.get("ATTNLAB_REQUIRE_DATA"):  # CI: a missing mirror is a failure, not a skip
        pytest.fail(f"real data mirror not found at {path}")
    if not os.environ.get("ATTNLAB_DATA_MIRROR") and upstream_reachable():
        return ""
    pytest.skip(f"real data mirror not found at {path} and the public sources are unreachable")


@pytest.fixture
def mirror():
    return real_mirror()


def snapshot(*roots) -> dict[str, tuple[int, int]]:
    """Every file under `roots` with its size and modification time: "nothing changed" checks."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


@pytest.fixture
def postgres_url():
    """A PostgreSQL server's URL ($ATTNLAB_TEST_POSTGRES; `source scripts/postgres.sh` sets one up)."""
    import os

    url = os.environ.get("ATTNLAB_TEST_POSTGRES")
    if not url:
        if os.environ.get("ATTNLAB_REQUIRE_POSTGRES"):
            pytest.fail("ATTNLAB_TEST_POSTGRES is not set but CI requires the PostgreSQL tests")
        pytest.skip("set ATTNLAB_TEST_POSTGRES=postgresql://user:password@host/db to run")
    return url


@pytest.fixture
def browser():
    """Headless Chromium through Selenium with Debian's chromedriver (no downloads)."""
    import os

    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("ATTNLAB_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver (CI installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
