"""SQLite state: seen events, the delivery outbox, per-part attempts, mappings, cursors, sessions.

Every state change is one transaction, so a kill at any moment leaves either the old or the new state.
The outbox row is written before any network call; the per-part key is written before the create call,
which is what makes a retry after a crash safe on networks that honour idempotency keys.

What is kept, and for how long (`prune`): finished deliveries (done, skipped, dead-lettered), their
parts and the record of seen events go after the retention period. A mapping is what lets a later
reply, edit or delete reach the copy, so it is kept longer (for good by default); while it is kept,
the delivery it names and that delivery's parts stay too (only the post's content is dropped), and so
do the copies it made, which recognise our own posts coming back as echoes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from relaybird.model import Author, Event, Post, TargetRef
from relaybird.networks.base import TemporaryError

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
    """
    ALTER TABLE copies ADD COLUMN at REAL NOT NULL DEFAULT 0;
    UPDATE copies SET at = CAST(strftime('%s', 'now') AS REAL);
    UPDATE deliveries SET done_at = created_at WHERE state = 'dead' AND done_at IS NULL;
    CREATE INDEX copies_by_source ON copies (source_account, source_id);
    CREATE INDEX deliveries_by_source ON deliveries (source_account, source_id);
    CREATE INDEX deliveries_finished ON deliveries (state, done_at);
    CREATE INDEX mappings_by_delivery ON mappings (delivery_id);
    CREATE INDEX mappings_by_age ON mappings (created_at);
    CREATE INDEX seen_by_age ON seen (at);
    """,
    """
    ALTER TABLE parts ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    CREATE INDEX parts_unconfirmed ON parts (state) WHERE target_id IS NULL;
    """,
    """
    CREATE TABLE chat_posts (
        account TEXT NOT NULL,
        post_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        sender TEXT,
        at REAL NOT NULL,
        PRIMARY KEY (account, post_id)
    );
    CREATE INDEX chat_posts_by_age ON chat_posts (account, at);
    """,
]

OPEN_STATES = ("pending", "retry")
#: How a reply skipped for want of its parent's copy is recorded (the worker's reason starts so).
PARENT_WITHOUT_COPY = "its parent has no copy"

#: The replies (at any depth) skipped because the delivery `?` left their parent without a copy.
_REVIVE_ORPHANED_REPLIES = """
WITH RECURSIVE thread(id, source_account, source_id, target_account) AS (
    SELECT id, source_account, source_id, target_account FROM deliveries WHERE id=?
    UNION
    SELECT d.id, d.source_account, d.source_id, d.target_account
    FROM deliveries d JOIN thread t ON d.target_account=t.target_account
        AND d.source_account=t.source_account AND d.parent_source_id=t.source_id
    WHERE d.state='skipped' AND d.last_error LIKE ?
)
UPDATE deliveries SET state='pending', next_at=0, done_at=NULL, last_error=''
WHERE state='skipped' AND id IN (SELECT id FROM thread)
"""

_NOT_WAITING_FOR_PARENT = (
    "NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.target_account=d.target_account"
    " AND p.source_account=d.source_account AND p.source_id=d.parent_source_id"
    " AND p.state IN ('pending','retry','sending') AND p.id<d.id)"
)
FINISHED_STATES = ("done", "skipped", "dead")
PRUNE_BATCH = 500


def cursor_key(account: str, scope: str = "") -> str:
    """Where one of an account's streams keeps its position ("" is its own posts)."""
    return f"{account}#{scope}" if scope else account


class StoreUnavailable(TemporaryError):
    """The state database refused a write (disk full, I/O error, locked for too long).

    Nothing of the failed change was kept, the cursor included: the event will come again from the
    network once the listener reconnects and catches up, so the listener treats this as temporary.
    """


@dataclass
class Pruned:
    """Rows removed (or slimmed) by one pass of `Store.prune`."""

    deliveries: int = 0
    slimmed: int = 0
    mappings: int = 0
    copies: int = 0
    seen: int = 0

    def total(self) -> int:
        return self.deliveries + self.slimmed + self.mappings + self.copies + self.seen

    def add(self, other: Pruned) -> None:
        self.deliveries += other.deliveries
        self.slimmed += other.slimmed
        self.mappings += other.mappings
        self.copies += other.copies
        self.seen += other.seen


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
        """All of the block or none of it. A failed COMMIT (disk full) is rolled back too, and
        SQLite may already have rolled back by itself, so the connection is always usable after."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                with suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise

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
        with self.transaction() as db:
            self._advance_cursor(db, account, value)

    def session(self, account: str) -> str | None:
        row = self.db.execute("SELECT data FROM sessions WHERE account=?", (account,)).fetchone()
        return None if row is None else str(row["data"])

    def set_session(self, account: str, data: str) -> None:
        with self.transaction() as db:
            db.execute(
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

    def claim_unconfirmed(self, account: str, post_id: str, fingerprint: str) -> bool:
        """Recognise a post on `account` as one of our creates whose answer was lost.

        A create can land while its answer never arrives (a reset, a crash); the copy may then show
        up on the account's stream before the retry records it. It is ours when its record key is
        the key we chose (Bluesky), or, as a last guard, when its text has the fingerprint of a part
        we attempted and have not confirmed. It is then recorded as a copy, so it is never relayed.
        """
        key = post_id.rsplit("/", 1)[-1]
        rows = self.db.execute(
            "SELECT p.key, p.fingerprint, d.source_account, d.source_id FROM parts p"
            " JOIN deliveries d ON d.id = p.delivery_id"
            " WHERE p.target_id IS NULL AND d.target_account=?",
            (account,),
        ).fetchall()
        for row in rows:
            if row["key"] == key or (fingerprint and row["fingerprint"] == fingerprint):
                with self.transaction() as db:
                    db.execute(
                        "INSERT OR IGNORE INTO copies (target_account, target_id, source_account,"
                        " source_id, at) VALUES (?, ?, ?, ?, ?)",
                        (account, post_id, row["source_account"], row["source_id"], time.time()),
                    )
                return True
        return False

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
                self._advance_cursor(db, cursor_key(event.account, event.scope), event.cursor)
        return ids

    def _advance_cursor(self, db: sqlite3.Connection, account: str, value: str) -> None:
        db.execute(
            "INSERT INTO cursors (account, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (account) DO UPDATE SET value=excluded.value,"
            " updated_at=excluded.updated_at",
            (account, value, time.time()),
        )

    def was_seen(self, account: str, source_id: str, kind: str) -> bool:
        """Whether this event of the account was recorded before (it then creates nothing new)."""
        row = self.db.execute(
            "SELECT 1 FROM seen WHERE account=? AND source_id=? AND kind=?",
            (account, source_id, kind),
        ).fetchone()
        return row is not None

    def enqueue(
        self,
        planned: Planned,
        kind: str,
        source_account: str,
        post: Post,
        *,
        parent: str | None = None,
    ) -> int | None:
        """Queue one delivery decided outside the router (a bot's crosspost, an answer); the
        same (kind, source, target) queued twice is kept once, which is what makes asking twice
        post once. Returns the new id, or None when it was there already."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO deliveries (route, kind, source_account, source_id,"
                " parent_source_id, target_account, version, payload, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)",
                (
                    planned.route,
                    kind,
                    source_account,
                    post.id,
                    parent,
                    planned.target_account,
                    post.to_json(),
                    time.time(),
                ),
            )
            return cur.lastrowid if cur.rowcount else None

    def find_delivery(
        self, kind: str, source_account: str, source_id: str, target_account: str
    ) -> Delivery | None:
        row = self.db.execute(
            "SELECT * FROM deliveries WHERE kind=? AND source_account=? AND source_id=?"
            " AND target_account=? AND version='' ORDER BY id LIMIT 1",
            (kind, source_account, source_id, target_account),
        ).fetchone()
        return None if row is None else Delivery(**dict(row))

    def deliveries_of(
        self, source_account: str, source_id: str, target_account: str
    ) -> list[Delivery]:
        rows = self.db.execute(
            "SELECT * FROM deliveries WHERE source_account=? AND source_id=? AND target_account=?"
            " ORDER BY id",
            (source_account, source_id, target_account),
        ).fetchall()
        return [Delivery(**dict(row)) for row in rows]

    def copy_origin(self, target_account: str, target_id: str) -> tuple[str, str] | None:
        """What one of our posts on `target_account` was made from (one step, no chains)."""
        row = self.db.execute(
            "SELECT source_account, source_id FROM copies WHERE target_account=? AND target_id=?",
            (target_account, target_id),
        ).fetchone()
        return None if row is None else (str(row["source_account"]), str(row["source_id"]))

    def original_post(self, source_account: str, source_id: str) -> Post | None:
        """The post as it was queued for its copies, while its content is kept (see `prune`)."""
        row = self.db.execute(
            "SELECT payload FROM deliveries WHERE source_account=? AND source_id=?"
            " AND payload != '' ORDER BY id LIMIT 1",
            (source_account, source_id),
        ).fetchone()
        if row is None:
            return None
        try:
            return Post.from_json(str(row["payload"]))
        except (ValueError, KeyError, TypeError):
            return None

    # the outbox

    def next_delivery(self, target_account: str, now: float) -> Delivery | None:
        """The oldest ready delivery for a target whose parent is not still waiting to be mirrored.

        A reply waits for its parent's copy on the same target, so threads keep their order; other
        deliveries are not held up by one in backoff.
        """
        row = self.db.execute(
            "SELECT d.* FROM deliveries d WHERE d.target_account=? AND d.state IN ('pending','retry')"
            f" AND d.next_at<=? AND {_NOT_WAITING_FOR_PARENT} ORDER BY d.id LIMIT 1",
            (target_account, now),
        ).fetchone()
        return None if row is None else Delivery(**dict(row))

    def next_wakeup(self, target_account: str) -> float | None:
        """When the next delivery becomes ready. A reply waiting for its parent does not count:
        it becomes ready when the parent is done, not at a time, and would make an idle worker
        poll in a loop while its parent backs off."""
        row = self.db.execute(
            "SELECT MIN(d.next_at) AS at FROM deliveries d WHERE d.target_account=?"
            f" AND d.state IN ('pending','retry') AND {_NOT_WAITING_FOR_PARENT}",
            (target_account,),
        ).fetchone()
        return None if row["at"] is None else float(row["at"])

    def delivery(self, delivery_id: int) -> Delivery:
        found = self.find(delivery_id)
        if found is None:
            raise KeyError(delivery_id)
        return found

    def find(self, delivery_id: int) -> Delivery | None:
        row = self.db.execute("SELECT * FROM deliveries WHERE id=?", (delivery_id,)).fetchone()
        return None if row is None else Delivery(**dict(row))

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

    def begin_part(self, delivery_id: int, idx: int, key: str, fingerprint: str = "") -> None:
        """Mark a create as started, with its key, before the network call is made.

        The fingerprint of what is sent lets an echo be recognised even when the network's answer
        never came back (see `claim_unconfirmed`).
        """
        with self.transaction() as db:
            db.execute(
                "INSERT INTO parts (delivery_id, idx, key, state, fingerprint)"
                " VALUES (?, ?, ?, 'sending', ?)"
                " ON CONFLICT (delivery_id, idx) DO UPDATE SET state='sending'",
                (delivery_id, idx, key, fingerprint),
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
                "INSERT OR IGNORE INTO copies (target_account, target_id, source_account,"
                " source_id, at) VALUES (?, ?, ?, ?, ?)",
                (
                    delivery.target_account,
                    ref.id,
                    delivery.source_account,
                    delivery.source_id,
                    time.time(),
                ),
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
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state='done', done_at=?, last_error='' WHERE id=?",
                (time.time(), delivery.id),
            )

    def skip(self, delivery: Delivery, reason: str) -> None:
        """Nothing to do for this delivery (e.g. an edit of a post that was never mirrored)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state='skipped', done_at=?, last_error=? WHERE id=?",
                (time.time(), reason, delivery.id),
            )

    def forget_mapping(self, source_account: str, source_id: str, target_account: str) -> None:
        """The copy was deleted: later replies must not answer it. Copies stay known as echoes."""
        with self.transaction() as db:
            self._forget(db, source_account, source_id, target_account)

    @staticmethod
    def _forget(
        db: sqlite3.Connection, source_account: str, source_id: str, target_account: str
    ) -> None:
        db.execute(
            "DELETE FROM mappings WHERE source_account=? AND source_id=? AND target_account=?",
            (source_account, source_id, target_account),
        )

    def finish_delete(self, delivery: Delivery) -> None:
        """The copy is gone: forget its mapping and close the delete in one step, so a crash
        between the two cannot leave a delete that later looks like it had nothing to delete."""
        with self.transaction() as db:
            self._forget(db, delivery.source_account, delivery.source_id, delivery.target_account)
            db.execute(
                "UPDATE deliveries SET state='done', done_at=?, last_error='' WHERE id=?",
                (time.time(), delivery.id),
            )

    def replace_part(self, delivery_id: int, idx: int, ref: TargetRef) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE parts SET target_id=?, target_cid=?, target_url=?"
                " WHERE delivery_id=? AND idx=?",
                (ref.id, ref.cid, ref.url, delivery_id, idx),
            )

    def drop_part(self, delivery_id: int, idx: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM parts WHERE delivery_id=? AND idx=?", (delivery_id, idx))

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
        """A failed attempt: counted, and tried again at `at`."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state='retry', attempts=attempts+1, next_at=?, last_error=?"
                " WHERE id=?",
                (at, error, delivery.id),
            )

    def postpone(self, delivery: Delivery, reason: str, at: float) -> None:
        """The network asked us to wait: not a failure of the delivery, so not counted as one."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state='retry', next_at=?, last_error=? WHERE id=?",
                (at, reason, delivery.id),
            )

    def dead_letter(self, delivery: Delivery, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state='dead', attempts=attempts+1, last_error=?, done_at=?"
                " WHERE id=?",
                (error, time.time(), delivery.id),
            )

    def requeue(self, delivery_id: int | None = None) -> int:
        """Put dead-lettered deliveries back in the queue after the operator fixed the cause.

        Replies that were skipped because such a delivery left their parent without a copy come
        back with it (and their own replies, down the thread): they wait for the parent's new
        attempt, so a successful retry restores the whole thread. Returns how many dead letters
        were re-queued.
        """
        where = "state='dead'" if delivery_id is None else "state='dead' AND id=?"
        args: tuple[int, ...] = () if delivery_id is None else (delivery_id,)
        with self.transaction() as db:
            revived = [
                row["id"] for row in db.execute(f"SELECT id FROM deliveries WHERE {where}", args)
            ]
            for found in revived:
                db.execute(
                    "UPDATE deliveries SET state='retry', next_at=0, done_at=NULL WHERE id=?",
                    (found,),
                )
                db.execute(_REVIVE_ORPHANED_REPLIES, (found, f"{PARENT_WITHOUT_COPY}%"))
            return len(revived)

    def interrupted(self) -> list[Delivery]:
        """Deliveries a previous run was sending when it stopped."""
        rows = self.db.execute("SELECT * FROM deliveries WHERE state='sending' ORDER BY id")
        return [Delivery(**dict(row)) for row in rows.fetchall()]

    def resume(self, delivery: Delivery) -> None:
        with self.transaction() as db:
            db.execute("UPDATE deliveries SET state='retry' WHERE id=?", (delivery.id,))

    # chat posts a bot may be asked about

    def remember_chat_post(
        self, account: str, post: Post, sender: Author | None, keep: int
    ) -> None:
        """Keep a chat's recent post, for a crosspost request that answers it later, even after a
        restart: bots cannot read a Telegram message by id. Only the newest `keep` are kept."""
        by = json.dumps(asdict(sender)) if sender is not None else None
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO chat_posts (account, post_id, payload, sender, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account, post.id, post.to_json(), by, time.time()),
            )
            db.execute(
                "DELETE FROM chat_posts WHERE account=? AND rowid NOT IN (SELECT rowid FROM"
                " chat_posts WHERE account=? ORDER BY at DESC, rowid DESC LIMIT ?)",
                (account, account, keep),
            )

    def chat_post(self, account: str, post_id: str) -> tuple[Post, Author | None] | None:
        row = self.db.execute(
            "SELECT payload, sender FROM chat_posts WHERE account=? AND post_id=?",
            (account, post_id),
        ).fetchone()
        if row is None:
            return None
        sender = Author(**json.loads(row["sender"])) if row["sender"] else None
        return Post.from_json(row["payload"]), sender

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

    def queue_depth(self) -> dict[tuple[str, str], int]:
        """Deliveries per (target, state) not done with: queued, being sent, waiting, dead."""
        rows = self.db.execute(
            "SELECT target_account, state, COUNT(*) AS n FROM deliveries"
            " WHERE state IN ('pending','retry','sending','dead') GROUP BY target_account, state"
        ).fetchall()
        return {(row["target_account"], row["state"]): int(row["n"]) for row in rows}

    def problems(self, limit: int = 20) -> list[Delivery]:
        """The most recent deliveries that failed and are waiting or given up, newest first."""
        rows = self.db.execute(
            "SELECT * FROM deliveries WHERE state IN ('retry','dead') AND last_error != ''"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [Delivery(**dict(row)) for row in rows]

    def cursors(self) -> dict[str, tuple[str, float]]:
        """Every account's cursor and when it last moved (Unix time)."""
        rows = self.db.execute("SELECT account, value, updated_at FROM cursors").fetchall()
        return {row["account"]: (str(row["value"]), float(row["updated_at"])) for row in rows}

    # retention

    def prune(
        self,
        finished_before: float | None,
        mapped_before: float | None = None,
        batch: int = PRUNE_BATCH,
    ) -> Pruned:
        """One pass of at most `batch` rows per kind, in one transaction; call until it prunes
        nothing, so that a large backlog never holds the write lock for long.

        `finished_before` bounds finished deliveries, seen events and orphaned copies (None keeps
        them); `mapped_before` bounds mappings (None keeps them for good).
        """
        pruned = Pruned()
        with self.transaction() as db:
            if mapped_before is not None:
                pruned.mappings = db.execute(
                    "DELETE FROM mappings WHERE rowid IN (SELECT rowid FROM mappings"
                    " WHERE created_at < ? LIMIT ?)",
                    (mapped_before, batch),
                ).rowcount
            if finished_before is not None:
                self._prune_finished(db, finished_before, batch, pruned)
        return pruned

    @staticmethod
    def _prune_finished(db: sqlite3.Connection, before: float, batch: int, pruned: Pruned) -> None:
        mapped = "EXISTS (SELECT 1 FROM mappings m WHERE m.delivery_id = d.id)"
        finished = f"d.state IN {FINISHED_STATES!r} AND d.done_at < ?"
        ids = [
            row[0]
            for row in db.execute(
                f"SELECT d.id FROM deliveries d WHERE {finished} AND NOT {mapped} LIMIT ?",
                (before, batch),
            ).fetchall()
        ]
        if ids:
            marks = ",".join("?" * len(ids))
            db.execute(f"DELETE FROM parts WHERE delivery_id IN ({marks})", ids)
            pruned.deliveries = db.execute(
                f"DELETE FROM deliveries WHERE id IN ({marks})", ids
            ).rowcount
        pruned.slimmed = db.execute(
            "UPDATE deliveries SET payload='' WHERE id IN (SELECT d.id FROM deliveries d"
            f" WHERE {finished} AND d.payload != '' AND {mapped} LIMIT ?)",
            (before, batch),
        ).rowcount
        pruned.copies = db.execute(
            "DELETE FROM copies WHERE rowid IN (SELECT c.rowid FROM copies c WHERE c.at < ?"
            " AND NOT EXISTS (SELECT 1 FROM mappings m WHERE m.target_account = c.target_account"
            " AND m.source_account = c.source_account AND m.source_id = c.source_id) LIMIT ?)",
            (before, batch),
        ).rowcount
        pruned.seen = db.execute(
            "DELETE FROM seen WHERE rowid IN (SELECT rowid FROM seen WHERE at < ? LIMIT ?)",
            (before, batch),
        ).rowcount
