"""What committed, against what the listeners received: lost, phantom and duplicated changes.

``install(connection)`` puts a trigger on Kinto's ``objects`` table (once ``kinto migrate`` made
it) that logs every row written into ``change_log``, in the writing transaction: a row of the
log commits, or rolls back, with the change it logs, so the log holds exactly what committed.
``compare(committed, received)`` says what a listener missed, made up or got twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

CHANGE_LOG = """
CREATE TABLE IF NOT EXISTS change_log (
    position BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    last_modified BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL
);

CREATE OR REPLACE FUNCTION log_change() RETURNS trigger AS $$
BEGIN
    INSERT INTO change_log (id, parent_id, resource_name, last_modified, deleted)
    VALUES (NEW.id, NEW.parent_id, NEW.resource_name, as_epoch(NEW.last_modified), NEW.deleted);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- AFTER: the row as Kinto's own BEFORE trigger (bump_timestamp) left it, last_modified set.
DROP TRIGGER IF EXISTS tgr_objects_change_log ON objects;
CREATE TRIGGER tgr_objects_change_log
AFTER INSERT OR UPDATE ON objects
FOR EACH ROW EXECUTE PROCEDURE log_change();
"""


class Change(NamedTuple):
    """One committed version of an object: what a listener must receive once."""

    resource_name: str
    id: str
    last_modified: int
    deleted: bool

    def __str__(self) -> str:
        deleted = " (deleted)" if self.deleted else ""
        return f"{self.resource_name} {self.id} @{self.last_modified}{deleted}"


def install(connection: Any) -> None:
    """Log every change to Kinto's objects in ``change_log`` (after ``kinto migrate``)."""
    with connection.cursor() as cursor:
        cursor.execute(CHANGE_LOG)


def committed(connection: Any, parent_id: str | None = None) -> list[Change]:
    """The changes ``change_log`` holds, in the order they were written; only those of the
    objects under ``parent_id`` (``/buckets/b/collections/c``) when it is given."""
    query = "SELECT resource_name, id, last_modified, deleted FROM change_log"
    parameters: tuple[str, ...] = ()
    if parent_id is not None:
        query += " WHERE parent_id = %s"
        parameters = (parent_id,)
    with connection.cursor() as cursor:
        cursor.execute(query + " ORDER BY position", parameters)
        return [Change(*row) for row in cursor.fetchall()]


def received(events: Iterable[dict], parent_id: str | None = None) -> list[Change]:
    """The changes in the events a recording listener of tests/integration/listeners.py
    received, once per delivery; only those under ``parent_id`` when it is given."""
    changes = []
    for event in events:
        payload = event["payload"]
        if parent_id is not None and parent_id != parent_of(payload):
            continue
        for impacted in event["impacted_objects"] or event["impacted_records"]:
            # Kinto sends a deleted object's tombstone as "new"; without one, the old version
            # stands for it (and shows up as a phantom: it is not what committed).
            new = impacted.get("new") or {**impacted["old"], "deleted": True}
            changes.append(
                Change(
                    event["resource_name"],
                    new["id"],
                    new["last_modified"],
                    bool(new.get("deleted", False)),
                )
            )
    return changes


def parent_of(payload: dict) -> str:
    """The ``parent_id`` Kinto stores the objects of a payload under."""
    if "collection_id" in payload and payload["resource_name"] == "record":
        return f"/buckets/{payload['bucket_id']}/collections/{payload['collection_id']}"
    if payload["resource_name"] == "bucket":
        return ""
    return f"/buckets/{payload['bucket_id']}"


@dataclass(frozen=True)
class Comparison:
    """Committed changes against received ones."""

    committed: int
    received: int
    lost: list[Change]  # committed, never received
    phantom: list[Change]  # received, never committed
    duplicated: dict[Change, int]  # received more than once: how many times

    def __str__(self) -> str:
        lines = [
            f"committed {self.committed} changes, received {self.received}: "
            f"lost {len(self.lost)}, phantom {len(self.phantom)}, "
            f"duplicated {len(self.duplicated)} "
            f"({sum(self.duplicated.values()) - len(self.duplicated)} extra deliveries)"
        ]
        for name, changes in (("lost", self.lost), ("phantom", self.phantom)):
            lines += [f"  {name}: {change}" for change in changes[:10]]
        lines += [f"  duplicated: {c} x{n}" for c, n in list(self.duplicated.items())[:10]]
        return "\n".join(lines)


def compare(committed: Iterable[Change], received: Iterable[Change]) -> Comparison:
    """What a listener lost, made up and got twice, of what committed."""
    done = Counter(committed)
    got = Counter(received)
    return Comparison(
        committed=sum(done.values()),
        received=sum(got.values()),
        lost=[change for change in done if change not in got],
        phantom=[change for change in got if change not in done],
        duplicated={change: n for change, n in got.items() if n > 1},
    )
