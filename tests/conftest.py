import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Parity errors measured by the tests, printed at the end of the run.
PARITY_REPORT: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if PARITY_REPORT:
        terminalreporter.section("parity with PyTorch: max |logit diff| / max |logit|")
        for case, error in sorted(PARITY_REPORT.items()):
            terminalreporter.write_line(f"{case:60s} {error:.2e}")


@pytest.fixture(scope="session")
def parity_report():
    return PARITY_REPORT
