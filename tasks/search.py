"""The built-in search index listener: a SQLite FTS5 full-text index of resources' records.

Workers index the resources named in ``NOTIFIER_SEARCH_RESOURCES`` (space or comma separated)
into the SQLite file ``NOTIFIER_SEARCH_INDEX``. Readers query it with SQL; the schema is::

    records(id, resource_name, parent, record_id, last_modified, deleted, record, text)
        one row per record; record is its JSON, parent names where it lives; a deleted
        record stays as a tombstone (deleted = 1, no text), so that an older change
        arriving late cannot bring it back
    records_fts(text)  -- FTS5, content of records, rowid = records.id

for example ``SELECT r.record FROM records_fts JOIN records r ON r.id = records_fts.rowid
WHERE records_fts MATCH ? AND NOT r.deleted ORDER BY rank``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import cache
from typing import Any

from notifier.events import parent_of
from tasks.event import Event

__all__ = ["SearchIndex", "update_search_index"]

# One transaction, so that a reader never sees half a schema.
_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    resource_name TEXT NOT NULL,
    parent TEXT NOT NULL,
    record_id TEXT NOT NULL,
    last_modified INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (resource_name, parent, record_id)
);
CREATE VIRTUAL TABLE IF NOT EXISTS records_fts USING fts5(
    text, content='records', content_rowid='id'
);
CREATE TRIGGER IF NOT EXISTS records_ai AFTER INSERT ON records BEGIN
    INSERT INTO records_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS records_ad AFTER DELETE ON records BEGIN
    INSERT INTO records_fts(records_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS records_au AFTER UPDATE ON records BEGIN
    INSERT INTO records_fts(records_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO records_fts(rowid, text) VALUES (new.id, new.text);
END;
COMMIT;
"""


# A row changes only for a newer version; on a tie, a delete wins.
_UPSERT = """
INSERT INTO records (resource_name, parent, record_id, last_modified, deleted, record, text)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (resource_name, parent, record_id) DO UPDATE SET
    last_modified = excluded.last_modified, deleted = excluded.deleted,
    record = excluded.record, text = excluded.text
WHERE excluded.last_modified IS NULL OR records.last_modified IS NULL
    OR excluded.last_modified > records.last_modified
    OR (excluded.last_modified = records.last_modified AND excluded.deleted)
"""


def _text(record: dict[str, Any]) -> str:
    """The words a record is found by: its string values, nested ones included."""
    words: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            words.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key != "id":
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(record)
    return "\n".join(words)


def _match_expression(query: str) -> str:
    # Every word must appear, each quoted so that FTS5 operators in a query are plain words.
    words = re.findall(r"\w+", query)
    return " ".join('"' + word + '"' for word in words)


class SearchIndex:
    """A full-text index of records in one SQLite file, safe to share between processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as connection:
            connection.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            with connection:  # one transaction: committed, or rolled back on error
                yield connection

    def apply(self, event: Event) -> None:
        """Bring the index up to date with ``event``.

        A change is applied only if it is newer (``last_modified``) than what the index holds,
        and a delete leaves a tombstone: events applied in any order, or twice, leave the index
        as the last change left the record.
        """
        parent = json.dumps(parent_of(event.payload))
        rows = []
        for change in event.impacted_records:
            new, old = change.get("new") or {}, change.get("old") or {}
            deleted = event.action == "delete" or bool(new.get("deleted"))
            record_id = new.get("id", old.get("id"))
            if record_id is None:
                continue
            if deleted:
                version = new.get("last_modified", event.payload.get("timestamp"))
                tombstone = {"id": record_id, "last_modified": version, "deleted": True}
                row = (version, True, json.dumps(tombstone), "")
            else:
                row = (new.get("last_modified"), False, json.dumps(new), _text(new))
            rows.append((event.resource_name, parent, str(record_id), *row))
        with self._connect() as connection:
            connection.executemany(_UPSERT, rows)

    def search(self, query: str, resource_name: str | None = None) -> list[dict[str, Any]]:
        """The records whose text holds every word of ``query``, best match first."""
        expression = _match_expression(query)
        if not expression:
            return []
        sql = (
            "SELECT r.record FROM records_fts JOIN records r ON r.id = records_fts.rowid "
            "WHERE records_fts MATCH ? AND NOT r.deleted"
        )
        parameters: list[Any] = [expression]
        if resource_name is not None:
            sql += " AND r.resource_name = ?"
            parameters.append(resource_name)
        with self._connect() as connection:
            rows = connection.execute(sql + " ORDER BY rank", parameters).fetchall()
        return [json.loads(row[0]) for row in rows]

    def __len__(self) -> int:
        with self._connect() as connection:
            count = connection.execute("SELECT count(*) FROM records WHERE NOT deleted")
            return int(count.fetchone()[0])


@cache
def _index(path: str) -> SearchIndex:
    return SearchIndex(path)


def update_search_index(event: Event) -> None:
    """The built-in listener: apply ``event`` to the index at ``NOTIFIER_SEARCH_INDEX``."""
    from tasks.app import app

    _index(app.conf.notifier_search_index).apply(event)
