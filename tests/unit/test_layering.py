"""Only the UI (app.py, screens/, widgets/) imports textual: data flows one way, from the kernel
through the probes and the sampler to the UI (docs/ARCHITECTURE.md, "Layout")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tcptop_q"
UI = ("app.py", "screens", "widgets")


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def is_ui(path: Path) -> bool:
    return path.relative_to(PKG).parts[0] in UI


def textual_imports(path: Path) -> list[str]:
    """Every `import textual...` / `from textual... import` anywhere in the module (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "textual"]
    return found


def test_no_module_outside_the_ui_imports_textual():
    core = [p for p in modules() if not is_ui(p)]
    names = {str(p.relative_to(PKG)) for p in core}
    # The walk covers the modules that matter most (it would miss them if the tree moved).
    for must in ("model.py", "sampler.py", "source.py", "record.py", "diagnosis.py", "lifecycle.py", "cli.py",
                 "codec.py", "attribution.py", "probes/bpf.py", "probes/diag.py", "lab/netns.py"):
        assert must in names, must
    bad = [f"{p.relative_to(PKG)}: {hit}" for p in core for hit in textual_imports(p)]
    assert bad == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from textual.widgets import Static\n    import textual.app as a\n")
    assert textual_imports(probe) == ["m.py:2: textual.widgets", "m.py:3: textual.app"]


def test_importing_every_core_module_loads_no_textual():
    """The same at run time, transitively (a core module importing a UI module would pull textual in)."""
    core = []
    for p in modules():
        if is_ui(p) or p.name == "__main__.py":
            continue
        rel = p.relative_to(PKG).with_suffix("")
        parts = [x for x in rel.parts if x != "__init__"]
        core.append(".".join(["tcptop_q", *parts]))
    code = (
        "import sys\n"
        f"for m in {core!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(len(bad), bad[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "0", out
