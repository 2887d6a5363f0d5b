"""Plain text of what the app shows right now (for assertions and for reading layouts)."""

from __future__ import annotations


def screen_text(app) -> str:
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip).rstrip() for strip in strips)
