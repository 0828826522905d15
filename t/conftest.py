"""pytest glue for xrayd's integration tests (see xrayd_fixture.py).

Fixtures:
  xrayd     a factory: xrayd() -> a new Xrayd in the test's tmp directory;
            every daemon it made is stopped after the test body, and its
            logs checked; an [alert]/[crit]/[emerg] line the test did not
            allow, or a sanitizer report, FAILS the test.
  cleanup   a list; append objects with close() (backends) to have them
            closed after the test.

Every test runs under an alarm (default 600 s, or @pytest.mark.timeout(N))
so a hung daemon cannot hang the suite.
"""

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xrayd_fixture as xf  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test alarm")


class _Factory:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.daemons = []

    def __call__(self, name="xrayd"):
        d = xf.Xrayd(self.tmp_path / name if self.daemons or name != "xrayd"
                     else self.tmp_path, name=name)
        self.daemons.append(d)
        return d

    def check_all(self):
        problems = []
        for d in self.daemons:
            problems += d.check()
        return problems

    def kill_all(self):
        for d in self.daemons:
            d.kill_all()


@pytest.fixture
def xrayd(tmp_path):
    if not xf.XRAYD_BIN.exists():
        pytest.fail("xrayd binary not found at %s (build with make, or set "
                    "XRAYD_BIN)" % xf.XRAYD_BIN)
    f = _Factory(tmp_path)
    yield f
    # Normally check_all() already ran in pytest_runtest_call; this is the
    # safety net for setup errors and interrupted tests.
    f.check_all()
    f.kill_all()


@pytest.fixture
def cleanup():
    objs = []
    yield objs
    for o in reversed(objs):
        try:
            o.close()
        except Exception:  # noqa: BLE001 - best effort in teardown
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    f = item.funcargs.get("xrayd") if hasattr(item, "funcargs") else None
    if not isinstance(f, _Factory):
        return
    problems = f.check_all()
    if not problems:
        return
    text = "xrayd logs/exit show problems:\n  " + "\n  ".join(problems[:50])
    if outcome.excinfo is None:
        # The body passed: the daemon's complaints fail the test.
        pytest.fail(text, pytrace=False)
    else:
        item.add_report_section("call", "xrayd", text)


class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm("test exceeded its time budget")


@pytest.fixture(autouse=True)
def _time_budget(request):
    m = request.node.get_closest_marker("timeout")
    secs = int(m.args[0]) if m else 600
    scale = float(os.environ.get("XRAYD_TEST_TIME_SCALE", "1"))
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(secs * scale)))
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
