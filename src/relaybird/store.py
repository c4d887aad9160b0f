"""SQLite state: seen events, the delivery outbox, per-part attempts, mappings, cursors, sessions.

Every state change is one transaction, so a kill at any moment leaves either the old or the new state.
The outbox row is written before any network call; the per-part key is written before the create call,
which is what makes a retry after a crash safe on networks that honour idempotency keys.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from relaybird.model import Event, TargetRef

MIGRATIONS: list[str] = [
    """
    CREATE TABLE cursors (
        account TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE seen (
        account TEXT NOT NULL,
        source_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (account, source_id, kind)
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        route TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_account TEXT NOT NULL,
        source_id TEXT NOT NULL,
        parent_source_id TEXT,
        target_account TEXT NOT NULL,
        version TEXT NOT NULL DEFAULT '',
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        done_at REAL,
        UNIQUE (kind, source_account, source_id, target_account, version)
    );
    CREATE INDEX deliveries_by_target ON deliveries (target_account, state, id);
    CREATE TABLE parts (
        delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
        idx INTEGER NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        target_id TEXT,
        target_cid TEXT,
        target_url TEXT,
        PRIMARY KEY (delivery_id, idx)
    );
    CREATE TABLE mappings (
        source_account TEXT NOT NULL,
        source_id TEXT NOT NULL,
        target_account TEXT NOT NULL,
        first_id TEXT NOT NULL,
        first_url TEXT NOT NULL,
        last_id TEXT NOT NULL,
        last_cid TEXT NOT NULL,
        root_id TEXT NOT NULL,
        root_cid TEXT NOT NULL,
        delivery_id INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (source_account, source_id, target_account)
    );
    CREATE TABLE copies (
        target_account TEXT NOT NULL,
        target_id TEXT NOT NULL,
        source_account TEXT NOT NULL,
        source_id TEXT NOT NULL,
        PRIMARY KEY (target_account, target_id)
    );
    CREATE TABLE sessions (
        account TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    """,
]

OPEN_STATES = ("pending", "retry")


@dataclass(frozen=True)
class Delivery:
    id: int
    route: str
    kind: str
    source_account: str
    source_id: str
    parent_source_id: str | None
    target_account: str
    version: str
    payload: str
    state: str
    attempts: int
    next_at: float
    last_error: str
    created_at: float
    done_at: float | None = None


@dataclass(frozen=True)
class Part:
    delivery_id: int
    idx: int
    key: str
    state: str
    ref: TargetRef | None


@dataclass(frozen=True)
class Mapping:
    source_account: str
    source_id: str
    target_account: str
    first: TargetRef
    last: TargetRef
    root: TargetRef
    delivery_id: int
    created_at: float


@dataclass(frozen=True)
class Planned:
    """One delivery the router decided on, before it has an id."""

    route: str
    target_account: str


class Store:
    """One connection, used from the event loop's thread only: SQLite has one writer anyway."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")

    # cursors and sessions

    def cursor(self, account: str) -> str | None:
        row = self.db.execute("SELECT value FROM cursors WHERE account=?", (account,)).fetchone()
        return None if row is None else str(row["value"])

    def set_cursor(self, account: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO cursors (account, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (account) DO UPDATE SET value=excluded.value,"
            " updated_at=excluded.updated_at",
            (account, value, time.time()),
        )

    def session(self, account: str) -> str | None:
        row = self.db.execute("SELECT data FROM sessions WHERE account=?", (account,)).fetchone()
        return None if row is None else str(row["data"])

    def set_session(self, account: str, data: str) -> None:
        self.db.execute(
            "INSERT INTO sessions (account, data) VALUES (?, ?)"
            " ON CONFLICT (account) DO UPDATE SET data=excluded.data",
            (account, data),
        )

    # intake

    def is_copy(self, account: str, post_id: str) -> bool:
        """Whether `post_id` on `account` is a copy we made: an echo that must not travel back."""
        row = self.db.execute(
            "SELECT 1 FROM copies WHERE target_account=? AND target_id=?", (account, post_id)
        ).fetchone()
        return row is not None

    def accept(self, event: Event, planned: list[Planned]) -> list[int]:
        """Record an event and its deliveries atomically; an event seen before creates nothing."""
        post = event.post
        seen_id = f"{post.id}#{event.version}" if event.version else post.id
        waits_for = post.id if event.kind.value in ("edit", "delete") else post.reply_to
        with self.transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO seen (account, source_id, kind, at) VALUES (?, ?, ?, ?)",
                (event.account, seen_id, event.kind.value, time.time()),
            ).rowcount
            ids: list[int] = []
            if inserted:
                payload = post.to_json()
                for plan in planned:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO deliveries (route, kind, source_account, source_id,"
                        " parent_source_id, target_account, version, payload, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            plan.route,
                            event.kind.value,
                            event.account,
                            post.id,
                            waits_for,
                            plan.target_account,
                            event.version,
                            payload,
                            time.time(),
                        ),
                    )
                    if cur.rowcount and cur.lastrowid is not None:
                        ids.append(cur.lastrowid)
            if event.cursor is not None:
                self._advance_cursor(db, event.account, event.cursor)
        return ids

    def _advance_cursor(self, db: sqlite3.Connection, account: str, value: str) -> None:
        db.execute(
            "INSERT INTO cursors (account, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (account) DO UPDATE SET value=excluded.value,"
            " updated_at=excluded.updated_at",
            (account, value, time.time()),
        )

    # the outbox

    def next_delivery(self, target_account: str, now: float) -> Delivery | None:
        """The oldest ready delivery for a target whose parent is not still waiting to be mirrored.

        A reply waits for its parent's copy on the same target, so threads keep their order; other
        deliveries are not held up by one in backoff.
        """
        row = self.db.execute(
            "SELECT d.* FROM deliveries d WHERE d.target_account=? AND d.state IN ('pending','retry')"
            " AND d.next_at<=? AND NOT EXISTS (SELECT 1 FROM deliveries p"
            "  WHERE p.target_account=d.target_account AND p.source_account=d.source_account"
            "  AND p.source_id=d.parent_source_id AND p.state IN ('pending','retry','sending')"
            "  AND p.id<d.id)"
            " ORDER BY d.id LIMIT 1",
            (target_account, now),
        ).fetchone()
        return None if row is None else Delivery(**dict(row))

    def next_wakeup(self, target_account: str) -> float | None:
        row = self.db.execute(
            "SELECT MIN(next_at) AS at FROM deliveries WHERE target_account=?"
            " AND state IN ('pending','retry')",
            (target_account,),
        ).fetchone()
        return None if row["at"] is None else float(row["at"])

    def delivery(self, delivery_id: int) -> Delivery:
        row = self.db.execute("SELECT * FROM deliveries WHERE id=?", (delivery_id,)).fetchone()
        return Delivery(**dict(row))

    def deliveries(self, state: str | None = None) -> list[Delivery]:
        if state is None:
            rows = self.db.execute("SELECT * FROM deliveries ORDER BY id").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM deliveries WHERE state=? ORDER BY id", (state,)
            ).fetchall()
        return [Delivery(**dict(row)) for row in rows]

    def parts(self, delivery_id: int) -> list[Part]:
        rows = self.db.execute(
            "SELECT * FROM parts WHERE delivery_id=? ORDER BY idx", (delivery_id,)
        ).fetchall()
        return [
            Part(
                delivery_id=row["delivery_id"],
                idx=row["idx"],
                key=row["key"],
                state=row["state"],
                ref=TargetRef(row["target_id"], row["target_url"] or "", row["target_cid"] or "")
                if row["target_id"]
                else None,
            )
            for row in rows
        ]

    def begin_part(self, delivery_id: int, idx: int, key: str) -> None:
        """Mark a create as started, with its key, before the network call is made."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO parts (delivery_id, idx, key, state) VALUES (?, ?, ?, 'sending')"
                " ON CONFLICT (delivery_id, idx) DO UPDATE SET state='sending'",
                (delivery_id, idx, key),
            )
            db.execute("UPDATE deliveries SET state='sending' WHERE id=?", (delivery_id,))

    def finish_part(self, delivery: Delivery, idx: int, ref: TargetRef) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE parts SET state='sent', target_id=?, target_cid=?, target_url=?"
                " WHERE delivery_id=? AND idx=?",
                (ref.id, ref.cid, ref.url, delivery.id, idx),
            )
            db.execute(
                "INSERT OR IGNORE INTO copies (target_account, target_id, source_account, source_id)"
                " VALUES (?, ?, ?, ?)",
                (delivery.target_account, ref.id, delivery.source_account, delivery.source_id),
            )

    def complete(
        self, delivery: Delivery, first: TargetRef, last: TargetRef, root: TargetRef
    ) -> None:
        """The delivery is whole: record the mapping later replies, edits and deletes will need."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO mappings (source_account, source_id, target_account,"
                " first_id, first_url, last_id, last_cid, root_id, root_cid, delivery_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.source_account,
                    delivery.source_id,
                    delivery.target_account,
                    first.id,
                    first.url,
                    last.id,
                    last.cid,
                    root.id,
                    root.cid,
                    delivery.id,
                    now,
                ),
            )
            db.execute(
                "UPDATE deliveries SET state='done', done_at=?, last_error='' WHERE id=?",
                (now, delivery.id),
            )

    def was_relayed(self, source_account: str, source_id: str) -> bool:
        """Whether any copy of this post was planned: only then do its edits and deletes matter."""
        row = self.db.execute(
            "SELECT 1 FROM deliveries WHERE source_account=? AND source_id=?"
            " AND kind IN ('post','reply','repost') LIMIT 1",
            (source_account, source_id),
        ).fetchone()
        return row is not None

    def mark_done(self, delivery: Delivery) -> None:
        self.db.execute(
            "UPDATE deliveries SET state='done', done_at=?, last_error='' WHERE id=?",
            (time.time(), delivery.id),
        )

    def skip(self, delivery: Delivery, reason: str) -> None:
        """Nothing to do for this delivery (e.g. an edit of a post that was never mirrored)."""
        self.db.execute(
            "UPDATE deliveries SET state='skipped', done_at=?, last_error=? WHERE id=?",
            (time.time(), reason, delivery.id),
        )

    def forget_mapping(self, source_account: str, source_id: str, target_account: str) -> None:
        """The copy was deleted: later replies must not answer it. Copies stay known as echoes."""
        self.db.execute(
            "DELETE FROM mappings WHERE source_account=? AND source_id=? AND target_account=?",
            (source_account, source_id, target_account),
        )

    def replace_part(self, delivery_id: int, idx: int, ref: TargetRef) -> None:
        self.db.execute(
            "UPDATE parts SET target_id=?, target_cid=?, target_url=? WHERE delivery_id=? AND idx=?",
            (ref.id, ref.cid, ref.url, delivery_id, idx),
        )

    def drop_part(self, delivery_id: int, idx: int) -> None:
        self.db.execute("DELETE FROM parts WHERE delivery_id=? AND idx=?", (delivery_id, idx))

    def echo_origin(self, account: str, post_id: str) -> tuple[str, str] | None:
        """For one of our copies, the post it was first copied from (following chains back)."""
        found: tuple[str, str] | None = None
        current = (account, post_id)
        for _ in range(16):
            row = self.db.execute(
                "SELECT source_account, source_id FROM copies WHERE target_account=? AND target_id=?",
                current,
            ).fetchone()
            if row is None:
                break
            found = current = (row["source_account"], row["source_id"])
        return found

    def holders(self, origin_account: str, origin_id: str) -> set[str]:
        """Every account holding the original or a copy of it, or about to, through chains too.

        Deliveries still queued count as held: read at the moment an echo is handled, this is what
        keeps any route graph from giving an account a second copy or sending one back.
        """
        held = {origin_account}
        seen = {(origin_account, origin_id)}
        frontier = [(origin_account, origin_id)]
        while frontier:
            account, post_id = frontier.pop()
            for row in self.db.execute(
                "SELECT target_account FROM deliveries WHERE source_account=? AND source_id=?"
                " AND kind IN ('post','reply','repost') AND state != 'skipped'",
                (account, post_id),
            ).fetchall():
                held.add(row["target_account"])
            for row in self.db.execute(
                "SELECT target_account, target_id FROM copies WHERE source_account=? AND source_id=?",
                (account, post_id),
            ).fetchall():
                item = (row["target_account"], row["target_id"])
                held.add(item[0])
                if item not in seen:
                    seen.add(item)
                    frontier.append(item)
        return held

    def retry_later(self, delivery: Delivery, error: str, at: float) -> None:
        self.db.execute(
            "UPDATE deliveries SET state='retry', attempts=attempts+1, next_at=?, last_error=?"
            " WHERE id=?",
            (at, error, delivery.id),
        )

    def dead_letter(self, delivery: Delivery, error: str) -> None:
        self.db.execute(
            "UPDATE deliveries SET state='dead', attempts=attempts+1, last_error=? WHERE id=?",
            (error, delivery.id),
        )

    def requeue(self, delivery_id: int | None = None) -> int:
        """Put dead-lettered deliveries back in the queue after the operator fixed the cause."""
        if delivery_id is None:
            cur = self.db.execute(
                "UPDATE deliveries SET state='retry', next_at=0 WHERE state='dead'"
            )
        else:
            cur = self.db.execute(
                "UPDATE deliveries SET state='retry', next_at=0 WHERE state='dead' AND id=?",
                (delivery_id,),
            )
        return cur.rowcount

    def interrupted(self) -> list[Delivery]:
        """Deliveries a previous run was sending when it stopped."""
        rows = self.db.execute("SELECT * FROM deliveries WHERE state='sending' ORDER BY id")
        return [Delivery(**dict(row)) for row in rows.fetchall()]

    def resume(self, delivery: Delivery) -> None:
        self.db.execute("UPDATE deliveries SET state='retry' WHERE id=?", (delivery.id,))

    # mappings

    def mapping(self, source_account: str, source_id: str, target_account: str) -> Mapping | None:
        row = self.db.execute(
            "SELECT * FROM mappings WHERE source_account=? AND source_id=? AND target_account=?",
            (source_account, source_id, target_account),
        ).fetchone()
        if row is None:
            return None
        return Mapping(
            source_account=row["source_account"],
            source_id=row["source_id"],
            target_account=row["target_account"],
            first=TargetRef(row["first_id"], row["first_url"]),
            last=TargetRef(row["last_id"], cid=row["last_cid"]),
            root=TargetRef(row["root_id"], cid=row["root_cid"]),
            delivery_id=row["delivery_id"],
            created_at=row["created_at"],
        )

    def mappings(self, source_account: str | None = None) -> list[Mapping]:
        query = "SELECT source_account, source_id, target_account FROM mappings"
        args: tuple[str, ...] = ()
        if source_account is not None:
            query += " WHERE source_account=?"
            args = (source_account,)
        found = []
        for row in self.db.execute(query + " ORDER BY created_at", args).fetchall():
            mapping = self.mapping(row[0], row[1], row[2])
            if mapping is not None:
                found.append(mapping)
        return found

    def counts(self) -> dict[tuple[str, str], int]:
        """Deliveries per (route, state), for status reports."""
        rows = self.db.execute(
            "SELECT route, state, COUNT(*) AS n FROM deliveries GROUP BY route, state"
        ).fetchall()
        return {(row["route"], row["state"]): int(row["n"]) for row in rows}
