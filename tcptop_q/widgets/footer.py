"""The key-hint footer of every screen: Textual's Footer, drawn with the screen's first frame.

Textual's Footer composes nothing at first and fills itself only once the screen has published
its bindings (an idle turn, a refresh, then a recompose that mounts one widget per key and
styles each): a new screen showed its content ~0.1 s of CPU before its key hints at 10k
listeners, and every screen switch rebuilt the footer even when its keys were the same
(bench/key_screens.py, docs/BENCHMARKS.md). This one composes its keys with the screen and
recomposes only when the keys it shows change (a binding shown, hidden, enabled or disabled).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer


class KeyFooter(Footer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_reactive(Footer._bindings_ready, True)
        self._drawn: tuple | None = None  # the keys the composed footer shows

    def _keys(self) -> tuple:
        """What the footer draws: every shown binding's key, action, label and enabled state,
        and the command palette's key."""
        shown = tuple(
            (key, b.action, b.description, b.key_display, b.group, enabled, tooltip)
            for key, (_node, b, enabled, tooltip) in self.screen.active_bindings.items()
            if b.show or key == self.app.COMMAND_PALETTE_BINDING
        )
        return (shown, self.show_command_palette, self.compact)

    def compose(self) -> ComposeResult:
        self._drawn = self._keys()
        yield from super().compose()

    def bindings_changed(self, screen) -> None:
        if self.is_attached and screen is self.screen and self._drawn == self._keys():
            return  # the same keys as drawn: nothing to rebuild
        super().bindings_changed(screen)
