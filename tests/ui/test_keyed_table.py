"""KeyedTable.sync(): the one update path of the detail screens' tables (pinned against the
installed Textual, whose DataTable internals KeyedTable edits)."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from tcptop_q.widgets.keyed_table import KeyedTable


class TableApp(App):
    def compose(self) -> ComposeResult:
        yield KeyedTable.with_columns((("NAME", 10, "name"), ("N", 4, "n")), id="t")


def cells(v: tuple[str, int]) -> dict[str, Text]:
    return {"name": Text(v[0]), "n": Text(str(v[1]))}


def shown(table: KeyedTable) -> list[str]:
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def test_sync_adds_removes_reorders_and_redraws_only_changes():
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(KeyedTable)
        table.sync({"a": ("a", 1), "b": ("b", 2), "c": ("c", 3)}, cells)
        await pilot.pause()
        assert shown(table) == ["a", "b", "c"]
        table.move_cursor(row=1)
        drawn = []

        def spy(v):
            drawn.append(v[0])
            return cells(v)

        table.sync({"c": ("c", 3), "b": ("b", 20), "d": ("d", 4)}, spy)
        await pilot.pause()
        assert shown(table) == ["c", "b", "d"]
        assert str(table.get_row_at(1)[1]) == "20"
        assert sorted(drawn) == ["b", "d"]  # c unchanged: not redrawn
        assert table.cursor_key() == "b"  # followed its key (detail screens)
        table.sync({"d": ("d", 4), "c": ("c", 3), "b": ("b", 20)}, cells, follow_cursor=False)
        await pilot.pause()
        assert table.cursor_row == 1 and table.cursor_key() == "c"  # stayed on its line
        table.sync({}, cells)
        await pilot.pause()
        assert table.row_count == 0 and table.order == [] and table.cursor_key() is None


async def test_add_keyed_rows_leaves_the_table_as_add_row_does():
    """The bulk add writes DataTable's row index, cells and Row records itself: the table it
    leaves must read back, render and move like one built by add_row()."""
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(KeyedTable)
        table.add_keyed_rows([("a", [Text("a"), Text("1")]), ("b", [Text("b")])])
        table.add_keyed_row("c", [Text("c"), Text("3")])
        table.add_keyed_rows([("d", [Text("d"), Text("4")])])
        await pilot.pause()
        assert shown(table) == ["a", "b", "c", "d"] and table.order == ["a", "b", "c", "d"]
        assert table.get_row("b")[1] is None  # missing cells are empty, as add_row leaves them
        assert table.get_row_index("d") == 3 and table.get_cell("c", "n").plain == "3"
        assert table.cursor_key() == "a"  # the first rows put the cursor on the top row
        await pilot.press("down", "down", "down")
        assert table.cursor_key() == "d"
        table.remove_keys(["b"])
        await pilot.pause()
        assert shown(table) == ["a", "c", "d"]
        try:
            table.add_keyed_rows([("a", [Text("x")])])
        except Exception as exc:  # the same error add_row raises
            assert type(exc).__name__ == "DuplicateKey"
        else:
            raise AssertionError("a duplicate key was accepted")
