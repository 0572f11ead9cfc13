import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_runtest_logstart(nodeid, location):  # noqa: ANN001 - pytest's hook
    from lanekit import trace

    trace(f"--- {nodeid}")
