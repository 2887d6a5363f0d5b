import os
import time

import pytest

os.environ["TCPQ_ASCII"] = "0"  # glyphs as drawn on a UTF-8 terminal, whatever the CI locale
os.environ["TZ"] = "UTC"  # the header and feed show local time; snapshots must not depend on the host
time.tzset()


@pytest.fixture
def make_app():
    from tcptop_q.app import TcpqTopApp

    from .fake_source import FakeSource, fixed_clock

    def make(source=None, **kw):
        kw.setdefault("clock", fixed_clock)
        kw.setdefault("start_collector", False)
        return TcpqTopApp(source or FakeSource(), **kw)

    return make
