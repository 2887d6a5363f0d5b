"""KeyFooter (tcptop_q/widgets/footer.py): the key hints are in the screen's first frame, the
footer is rebuilt when the keys it shows change, and only then."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Static
from textual.widgets._footer import FooterKey

from tcptop_q.widgets.footer import KeyFooter

from .helpers import wait_for
from .screen_text import screen_text


class FooterApp(App):
    BINDINGS = [Binding("x", "extra", "Extra"), Binding("z", "zap", "Zap")]

    def __init__(self) -> None:
        super().__init__()
        self.extra_shown = True

    def compose(self) -> ComposeResult:
        yield Static("body")
        yield KeyFooter()

    def check_action(self, action: str, parameters) -> bool | None:
        return self.extra_shown if action == "extra" else True

    def action_extra(self) -> None:
        pass

    def action_zap(self) -> None:
        pass


async def test_the_keys_come_with_the_first_frame_and_follow_changes_only():
    app = FooterApp()
    async with app.run_test(size=(60, 5)) as pilot:
        footer = app.query_one(KeyFooter)
        # composed with the screen: the keys are there without waiting for the bindings signal
        assert [k.key for k in footer.query(FooterKey)][:2] == ["x", "z"]
        await wait_for(pilot, lambda: "Extra" in screen_text(app) and "Zap" in screen_text(app), what="keys")
        keys = list(footer.query(FooterKey))
        app.refresh_bindings()  # the same keys: nothing rebuilt
        await pilot.pause()
        assert list(footer.query(FooterKey)) == keys
        app.extra_shown = False  # a key hidden: rebuilt without it
        app.refresh_bindings()
        await wait_for(pilot, lambda: "Extra" not in screen_text(app), what="the hidden key gone")
        assert "Zap" in screen_text(app)
        app.extra_shown = True
        app.refresh_bindings()
        await wait_for(pilot, lambda: "Extra" in screen_text(app), what="the key back")
