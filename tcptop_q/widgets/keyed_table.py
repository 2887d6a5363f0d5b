"""A DataTable whose rows are addressed by key and kept in an order we give it.

DataTable.remove_row() rebuilds the row index on every call (O(n) each) and
sort() only sees cell values. A live "top" re-orders and drops many rows per tick,
so this subclass adds bulk versions of both. They touch DataTable's row index
(`_row_locations`, `_data`, `rows`), the same fields sort()/remove_row() touch, in
one place; tests/ui pin the behaviour against the installed Textual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import zip_longest
from typing import Any, TypeVar

from textual._two_way_dict import TwoWayDict
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import CellKey, ColumnKey, DuplicateKey, Row, RowKey

V = TypeVar("V")


class KeyedTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="table.down"),
        Binding("k", "cursor_up", "Up", show=False, id="table.up"),
        Binding("home", "first_row", "First", show=False, id="table.home"),
        Binding("end", "last_row", "Last", show=False, id="table.end"),
    ]

    def action_first_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=0, animate=False)

    def action_last_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)

    @classmethod
    def with_columns(cls, columns: tuple[tuple[str, int, str], ...], **kwargs: Any) -> KeyedTable:
        """A table with (label, width, key) columns, as every detail screen declares them."""
        table = cls(**kwargs)
        for label, width, key in columns:
            table.add_column(label, width=width, key=key)
        return table

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", False)
        super().__init__(**kwargs)
        self.order: list[str] = []  # row keys top to bottom, as last applied
        self._rk: dict[str, RowKey] = {}  # str -> RowKey, so hot paths do not build keys
        self._ck: dict[str, ColumnKey] = {}
        self._values: dict[str, Any] = {}  # what sync() last drew per key

    # ------------------------------------------------------------ the one update path
    def sync(
        self,
        rows: Mapping[str, V],
        cells: Callable[[V], Mapping[str, Any]],
        *,
        follow_cursor: bool = True,
    ) -> None:
        """Show exactly `rows` (key -> value) in their order; a row is redrawn only when its
        value changed (values compared with ==), new rows are added, missing ones removed.

        `cells(value)` gives {column key: cell} in column order. With follow_cursor the cursor
        stays on its row's key through a re-order; otherwise it stays on its line (htop)."""
        cursor = self.cursor_key() if follow_cursor else None
        values = self._values
        self.remove_keys([k for k in self.order if k not in rows])
        for key, value in rows.items():
            if key not in self._rk:
                self.add_keyed_row(key, list(cells(value).values()))
            elif values.get(key) != value:
                self.update_row(key, dict(cells(value)))
            values[key] = value
        self.set_order(list(rows))
        if cursor is not None and cursor in rows:
            self.move_cursor_to_key(cursor)

    # ------------------------------------------------------------ queries
    def cursor_key(self) -> str | None:
        if not self.order or self.cursor_row < 0 or self.cursor_row >= len(self.order):
            return None
        return self.order[self.cursor_row]

    def has_key(self, key: str) -> bool:
        return key in self._rk

    # ------------------------------------------------------------ bulk edits
    def remove_keys(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for k in keys:
            self._values.pop(k, None)
        gone = {self._rk.pop(k) for k in keys if k in self._rk}
        if not gone:
            return
        for row_key in gone:
            if row_key not in self._data:
                continue
            for column_key in self._data[row_key]:
                self._updated_cells.discard(CellKey(row_key, column_key))
            del self.rows[row_key]
            del self._data[row_key]
            self._new_rows.discard(row_key)
        self.order = [k for k in self.order if k in self._rk]
        self._set_locations(self.order)
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate  # clamp
        self.refresh(layout=True)
        self.check_idle()

    def add_keyed_row(self, key: str, cells: Sequence[Any]) -> None:
        self._rk[key] = self.add_row(*cells, key=key)
        self.order.append(key)

    def add_keyed_rows(self, rows: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """add_row() for many rows at the bottom (height 1, no label): the same row index,
        cells and Row records, with one cursor check, one update count and one refresh
        instead of one each per row (10k rows of 16 cells: 240 ms of CPU by add_row, 60 ms here)."""
        columns = [c.key for c in self.ordered_columns]
        had_rows = bool(self.rows)
        locations, data, records, new_rows = self._row_locations, self._data, self.rows, self._new_rows
        for key, cells in rows:
            if len(cells) > len(columns):
                raise ValueError("More values provided than there are columns.")
            row_key = RowKey(key)
            if row_key in locations:
                raise DuplicateKey(f"The row key {row_key!r} already exists.")
            locations[row_key] = len(records)
            data[row_key] = dict(zip_longest(columns, cells))
            records[row_key] = Row(row_key, 1, None, False)
            new_rows.add(row_key)
            self._rk[key] = row_key
            self.order.append(key)
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate
        if not had_rows and self.rows and self.columns and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()
        self._update_count += 1
        self.check_idle()

    def set_cells(self, updates: Iterable[tuple[str, str, Any]]) -> int:
        """Replace many cells at once: one refresh instead of one per update_cell().

        Same effect as update_cell(..., update_width=False) for each; columns keep their width.
        """
        data, rk, ck = self._data, self._rk, self._ck
        n = 0
        for key, column, value in updates:
            column_key = ck.get(column)
            if column_key is None:
                column_key = ck[column] = ColumnKey(column)
            data[rk[key]][column_key] = value
            n += 1
        if n:
            self._update_count += 1
            self.refresh()
        return n

    def set_order(self, keys: Sequence[str]) -> None:
        """Put the rows in this order (every present key exactly once)."""
        keys = list(keys)
        if keys == self.order:
            return
        self.order = keys
        self._set_locations(keys)
        self.refresh()

    def update_row(self, key: str, changes: dict[str, Any]) -> None:
        for column, value in changes.items():
            self.update_cell(key, column, value)

    def move_cursor_to_key(self, key: str, keep_screen_offset: int | None = None) -> bool:
        """Cursor onto `key`; with keep_screen_offset, scroll so it stays at that screen line."""
        row_key = self._rk.get(key)
        index = None if row_key is None else self._row_locations.get(row_key)
        if index is None:
            return False
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False, scroll=keep_screen_offset is None)
            if keep_screen_offset is not None:
                self.scroll_to(y=max(0, index - keep_screen_offset), animate=False, immediate=True)
        return True

    def clear(self, columns: bool = False) -> KeyedTable:
        super().clear(columns)
        self.order = []
        self._rk = {}
        self._values = {}
        if columns:
            self._ck = {}
        return self

    def clear_rows(self) -> None:
        self.clear()

    # ------------------------------------------------------------ internals
    def _set_locations(self, keys: Sequence[str]) -> None:
        rk = self._rk
        self._row_locations = TwoWayDict({rk[k]: i for i, k in enumerate(keys)})
        self._update_count += 1
