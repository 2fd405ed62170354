"""The built-in search index: a SQLite FTS5 full-text index of resources' records.

Workers index the resources named in ``NOTIFIER_SEARCH_RESOURCES`` (space or comma separated)
into the SQLite file ``NOTIFIER_SEARCH_INDEX``. The deletes of the resources named in
``NOTIFIER_SEARCH_PARENTS`` (Kinto: ``bucket collection``) drop every record under them.
Readers query it with SQL; the schema is::

    records(id, resource_name, parent, record_id, last_modified, deleted, record, text)
        one row per record; record is its JSON, parent (a JSON object: the payload's
        matchdict values, e.g. {"bucket_id": "b", "collection_id": "c"}) names where it
        lives; a deleted record stays as a tombstone (deleted = 1, no text), so that an
        older change arriving late cannot bring it back
    records_fts(text)  -- FTS5, content of records, rowid = records.id
    drops(scope, last_modified)
        the parents deleted (scope: a JSON object like parent), so that an older change
        under them arriving late is not indexed

for example ``SELECT r.record FROM records_fts JOIN records r ON r.id = records_fts.rowid
WHERE records_fts MATCH ? AND NOT r.deleted ORDER BY rank``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from typing import Any

from notifier.wire.payload import parent_of
from tasks.listeners.event import Event, canonical, change_id, change_version, scopes_above

__all__ = ["SearchIndex"]

_KEY = re.compile(r"^\w+$")


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
CREATE TABLE IF NOT EXISTS drops (
    scope TEXT PRIMARY KEY,
    last_modified INTEGER NOT NULL
);
COMMIT;
"""

# A parent's delete is remembered as its newest version.
_DROP = """
INSERT INTO drops (scope, last_modified) VALUES (?, ?)
ON CONFLICT (scope) DO UPDATE SET last_modified = max(last_modified, excluded.last_modified)
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


#: Connections a process had when it forked: never used nor closed in the child (SQLite's
#: rule), so kept referenced here rather than left to the garbage collector.
_inherited: list[sqlite3.Connection] = []


def _open(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    return connection


class SearchIndex:
    """A full-text index of records in one SQLite file, safe to share between processes and
    threads: each keeps a connection of its own open (opening one per change cost more than
    the change: py-spy, on the bench's lag row)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        # The schema with a connection closed at once: this may run before a pool forks.
        with closing(_open(path)) as connection:
            with connection:
                connection.executescript(_SCHEMA)
            with connection:
                # Files written before parents were JSON objects held [key, value] pairs.
                listed = connection.execute("SELECT id, parent FROM records WHERE parent LIKE '[%'")
                connection.executemany(
                    "UPDATE records SET parent = ? WHERE id = ?",
                    [(canonical(json.loads(parent)), row) for row, parent in listed.fetchall()],
                )

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if getattr(local, "connection", None) is not None:
                _inherited.append(local.connection)
            local.connection, local.pid = _open(self.path), os.getpid()
        connection: sqlite3.Connection = local.connection
        return connection

    @contextmanager
    def _connect(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        with connection:  # one transaction: committed, or rolled back on error
            if write:
                # The write lock first: what a change reads (the drops above it, the row it
                # replaces) cannot change under it before it writes.
                connection.execute("BEGIN IMMEDIATE")
            yield connection

    def apply(self, event: Event, parents: frozenset[str] = frozenset()) -> None:
        """Bring the index up to date with ``event``; the delete of one of ``parents``
        (resource names, e.g. collection) drops every record under the deleted objects.

        A change is applied only if it is newer (``last_modified``) than what the index holds
        and than the delete of any parent above it, and a delete leaves a tombstone: events
        applied in any order, or twice, leave the index as the last change left the record.
        """
        if event.action == "delete" and event.resource_name in parents:
            with self._connect() as connection:
                for delete in event.parent_deletes():
                    self._drop(connection, delete.scope, delete.last_modified)
            return
        parent_items = parent_of(event.payload)
        parent = canonical(parent_items)
        rows, made_at = [], []  # made_at: each row's version (else the payload's timestamp)
        for change in event.impacted_records:
            new = change.get("new") or {}
            record_id = change_id(change)
            if record_id is None:
                continue
            version = change_version(change, event.payload)
            if event.action == "delete" or new.get("deleted"):
                tombstone = {"id": record_id, "last_modified": version, "deleted": True}
                row = (version, True, json.dumps(tombstone), "")
            else:
                row = (new.get("last_modified"), False, json.dumps(new), _text(new))
            rows.append((event.resource_name, parent, str(record_id), *row))
            made_at.append(version)
        with self._connect() as connection:
            dropped = self._dropped_at(connection, parent_items)
            if dropped is not None:
                # Changes made before a parent's delete are gone with it.
                rows = [
                    row
                    for row, at in zip(rows, made_at, strict=True)
                    if at is not None and at > dropped
                ]
            connection.executemany(_UPSERT, rows)

    @staticmethod
    def _dropped_at(connection: sqlite3.Connection, parent: Any) -> int | None:
        scopes = [canonical(scope) for scope in scopes_above(parent)]
        if not scopes:
            return None
        marks = ", ".join("?" * len(scopes))
        found = connection.execute(
            f"SELECT max(last_modified) FROM drops WHERE scope IN ({marks})", scopes
        ).fetchone()[0]
        return int(found) if found is not None else None

    @staticmethod
    def _drop(connection: sqlite3.Connection, scope: dict[str, Any], version: int | None) -> None:
        if version is None or not all(_KEY.match(key) for key in scope):
            return  # no version to compare later changes with, or no such payload key
        where = " AND ".join(f"json_extract(parent, '$.{key}') = ?" for key in scope)
        connection.execute(
            f"DELETE FROM records WHERE {where} AND (last_modified IS NULL OR last_modified <= ?)",
            [*(str(value) for value in scope.values()), version],
        )
        connection.execute(_DROP, (canonical(scope.items()), version))

    def reindex(
        self,
        resource_name: str,
        records: Iterable[tuple[Mapping[str, Any], dict[str, Any]]],
        as_of: int,
        on_progress: Callable[[int], None] = lambda count: None,
        chunk: int = 500,
    ) -> int:
        """Make the index hold the ``records`` of ``resource_name`` (pairs of parent, record)
        that a storage held at version ``as_of``, and no other; return how many.

        For disaster recovery, while workers keep applying events: a change newer than the
        index's wins, whichever came first, so changes made after the snapshot stay. Records
        the snapshot does not hold become tombstones at ``as_of``. Written ``chunk`` records
        per transaction (so that workers are not held up), ``on_progress`` told each time.
        """
        seen: set[tuple[str, str]] = set()
        rows: list[tuple[Any, ...]] = []
        parents: list[tuple[tuple[str, Any], ...]] = []

        def write() -> None:
            with self._connect() as connection:
                # A parent's delete applied since the snapshot was read drops its records.
                dropped = {parent: self._dropped_at(connection, parent) for parent in parents}
                connection.executemany(
                    _UPSERT,
                    [
                        row
                        for row, parent in zip(rows, parents, strict=True)
                        if (at := dropped[parent]) is None or (row[3] or 0) > at
                    ],
                )
            on_progress(len(rows))
            rows.clear()
            parents.clear()

        for parent_values, record in records:
            parent_items = tuple(sorted(parent_values.items()))
            parent, record_id = canonical(parent_items), str(record["id"])
            seen.add((parent, record_id))
            version = record.get("last_modified")
            row = (resource_name, parent, record_id, version, False, json.dumps(record))
            rows.append((*row, _text(record)))
            parents.append(parent_items)
            if len(rows) >= chunk:
                write()
        if rows:
            write()
        with self._connect() as connection:
            indexed = connection.execute(
                "SELECT id, parent, record_id FROM records WHERE resource_name = ? "
                "AND NOT deleted AND (last_modified IS NULL OR last_modified <= ?)",
                (resource_name, as_of),
            ).fetchall()
            connection.executemany(
                "UPDATE records SET deleted = 1, last_modified = ?, record = ?, text = '' "
                "WHERE id = ?",
                [
                    (as_of, json.dumps({"id": id_, "last_modified": as_of, "deleted": True}), row)
                    for row, parent, id_ in indexed
                    if (parent, id_) not in seen
                ],
            )
        return len(seen)

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
        with self._connect(write=False) as connection:
            rows = connection.execute(sql + " ORDER BY rank", parameters).fetchall()
        return [json.loads(row[0]) for row in rows]

    def __len__(self) -> int:
        with self._connect(write=False) as connection:
            count = connection.execute("SELECT count(*) FROM records WHERE NOT deleted")
            return int(count.fetchone()[0])
