"""model, sampler, source and probes never import textual (STYLE.md: one direction of data)."""

from __future__ import annotations

import subprocess
import sys

CORE = ["tcptop_q.model", "tcptop_q.sampler", "tcptop_q.source", "tcptop_q.probes.diag",
        "tcptop_q.probes.netns", "tcptop_q.probes.netstat", "tcptop_q.probes.owners", "tcptop_q.cli"]


def test_core_modules_do_not_import_textual():
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(len(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"
