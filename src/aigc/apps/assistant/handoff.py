"""The human handoff queue and the conversation history, in one SQLite file.

A question the assistant cannot answer becomes a handoff with status ``open``; a person
``answer``s it (status ``answered``; the answer is appended to the asker's conversation), then
``approve``s it (status ``approved``: the question and answer are written as a Markdown document
``approved/handoff-<id>.md`` in the index folder and the index is updated incrementally, so the
next asker gets it from the knowledge base) or ``reject``s it (kept out of the knowledge base).

Example:
    >>> q = HandoffQueue("kb/assistant.sqlite3")          # doctest: +SKIP
    >>> h = q.open("Do you ship to Mars?", reason="low confidence", confidence=0.1)
    >>> q.answer(h.id, "No, only to Earth.", by="alice")
    >>> q.approve(h.id)     # re-indexes kb/ with approved/handoff-1.md

Every change is one SQLite transaction (WAL journal), so a crash loses nothing committed and
two processes (the CLI and the studio) can share the file.

The same question asked again while its handoff is still open (same words up to case and
spacing, same conversation or none) does not open another one: the open handoff's ``asked``
count goes up. A client (an API key or a connection, as the studio names it) may open at most
``max_open_per_client`` handoffs an hour that are still open; past that, :class:`HandoffLimit`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from aigc.errors import AigcError

STATUSES = ("open", "answered", "approved", "rejected")
MAX_ANSWER_CHARS = 20_000
MAX_OPEN_PER_CLIENT = 20  # open handoffs one client may have opened in the last hour
LIMIT_WINDOW_S = 3600.0


class HandoffLimit(AigcError):
    """A client has too many open handoffs (nothing was written)."""


def question_key(question: str) -> str:
    """The question as de-duplication compares it: case-folded, whitespace collapsed.

    >>> question_key("  Do you ship\tto MARS? ") == question_key("do you ship to mars?")
    True
    """
    return " ".join(question.casefold().split())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL, citations TEXT NOT NULL DEFAULT '[]',
    author TEXT NOT NULL DEFAULT 'assistant', created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS handoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT REFERENCES conversations(id),
    question TEXT NOT NULL, reason TEXT NOT NULL, confidence REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    answer TEXT, answered_by TEXT, document TEXT,
    created REAL NOT NULL, answered_at REAL, closed_at REAL,
    asked INTEGER NOT NULL DEFAULT 1, client TEXT NOT NULL DEFAULT '',
    question_key TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS handoffs_status ON handoffs(status);
"""
# Columns added after the first release, for queue files made before them.
_ADDED = {"asked": "INTEGER NOT NULL DEFAULT 1", "client": "TEXT NOT NULL DEFAULT ''",
          "question_key": "TEXT NOT NULL DEFAULT ''"}


@dataclass(frozen=True)
class Handoff:
    id: int
    conversation_id: str | None
    question: str
    reason: str
    confidence: float
    status: str
    answer: str | None
    answered_by: str | None
    document: str | None  # source name in the index once approved ("approved/handoff-3.md")
    created: float
    answered_at: float | None
    closed_at: float | None
    asked: int = 1  # times the question was asked while this handoff was open
    client: str = ""  # who opened it (not shown to API clients)
    question_key: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["client"], d["question_key"]
        return d


class HandoffQueue:
    """Handoffs and conversations in the SQLite file ``path``; ``index_dir`` (default: the
    file's folder) is the index that approved answers go into."""

    def __init__(self, path: str | Path, index_dir: str | Path | None = None, *,
                 max_open_per_client: int = MAX_OPEN_PER_CLIENT):
        if max_open_per_client < 1:
            raise AigcError(f"max_open_per_client must be >= 1, got {max_open_per_client}")
        self.path = Path(path)
        self.index_dir = Path(index_dir) if index_dir is not None else self.path.parent
        self.max_open_per_client = max_open_per_client
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        try:
            with db:
                db.executescript(_SCHEMA)
                have = {r["name"] for r in db.execute("PRAGMA table_info(handoffs)")}
                for column, decl in _ADDED.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE handoffs ADD COLUMN {column} {decl}")
                db.execute("CREATE INDEX IF NOT EXISTS handoffs_open_key "
                           "ON handoffs(status, question_key)")
        finally:
            db.close()

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        db = self._db()
        try:
            with db:
                return db.execute(sql, args)
        finally:
            db.close()

    # -- conversations ----------------------------------------------------------------------
    def new_conversation(self) -> str:
        cid = uuid.uuid4().hex
        self._run("INSERT INTO conversations (id, created) VALUES (?, ?)", (cid, time.time()))
        return cid

    def add_message(self, conversation_id: str, role: str, content: str, *,
                    citations: list[dict] | None = None, author: str = "assistant") -> None:
        if role not in ("user", "assistant"):
            raise AigcError(f"role must be 'user' or 'assistant', got {role!r}")
        self._check_conversation(conversation_id)
        self._run("INSERT INTO messages (conversation_id, role, content, citations, author, "
                  "created) VALUES (?, ?, ?, ?, ?, ?)",
                  (conversation_id, role, content, json.dumps(citations or [], ensure_ascii=False),
                   author if role == "assistant" else "user", time.time()))

    def history(self, conversation_id: str) -> list[dict]:
        """The conversation's messages, oldest first: ``{"role", "content", "citations",
        "author"}`` (author: ``"assistant"`` or the person who answered a handoff)."""
        self._check_conversation(conversation_id)
        db = self._db()
        try:
            rows = db.execute("SELECT role, content, citations, author FROM messages WHERE "
                              "conversation_id = ? ORDER BY id", (conversation_id,)).fetchall()
        finally:
            db.close()
        return [{"role": r["role"], "content": r["content"],
                 "citations": json.loads(r["citations"]), "author": r["author"]} for r in rows]

    def _check_conversation(self, conversation_id: str) -> None:
        db = self._db()
        try:
            row = db.execute("SELECT 1 FROM conversations WHERE id = ?",
                             (conversation_id,)).fetchone()
        finally:
            db.close()
        if row is None:
            raise AigcError(f"no conversation {conversation_id!r} in {self.path}")

    # -- handoffs ---------------------------------------------------------------------------
    def open(self, question: str, *, reason: str, confidence: float,
             conversation_id: str | None = None, client: str = "") -> Handoff:
        """A handoff for ``question``: the open one with the same question (and conversation)
        if there is one (its ``asked`` count goes up), else a new one. Raises
        :class:`HandoffLimit` when ``client`` already opened ``max_open_per_client`` handoffs
        in the last hour that are still open."""
        if conversation_id is not None:
            self._check_conversation(conversation_id)
        key, now = question_key(question), time.time()
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")  # the check and the write as one step
            try:
                row = db.execute("SELECT id FROM handoffs WHERE status = 'open' AND "
                                 "question_key = ? AND conversation_id IS ? ORDER BY id LIMIT 1",
                                 (key, conversation_id)).fetchone()
                if row is not None:
                    db.execute("UPDATE handoffs SET asked = asked + 1 WHERE id = ?", (row["id"],))
                    handoff_id = row["id"]
                else:
                    if client:
                        (mine,) = db.execute(
                            "SELECT COUNT(*) FROM handoffs WHERE status = 'open' AND client = ? "
                            "AND created > ?", (client, now - LIMIT_WINDOW_S)).fetchone()
                        if mine >= self.max_open_per_client:
                            raise HandoffLimit(
                                f"this client already has {mine} open handoffs from the last "
                                f"hour (limit {self.max_open_per_client}); wait for answers")
                    cur = db.execute(
                        "INSERT INTO handoffs (conversation_id, question, reason, confidence, "
                        "created, client, question_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (conversation_id, question, reason, float(confidence), now, client, key))
                    handoff_id = cur.lastrowid
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()
        return self.get(handoff_id)

    def get(self, handoff_id: int) -> Handoff:
        db = self._db()
        try:
            row = db.execute("SELECT * FROM handoffs WHERE id = ?", (handoff_id,)).fetchone()
        finally:
            db.close()
        if row is None:
            raise AigcError(f"no handoff #{handoff_id} in {self.path}")
        return Handoff(**dict(row))

    def list(self, status: str | None = None) -> list[Handoff]:
        if status is not None and status not in STATUSES:
            raise AigcError(f"status must be one of {STATUSES}, got {status!r}")
        db = self._db()
        try:
            sql, args = "SELECT * FROM handoffs", ()
            if status:
                sql, args = sql + " WHERE status = ?", (status,)
            rows = db.execute(sql + " ORDER BY id", args).fetchall()
        finally:
            db.close()
        return [Handoff(**dict(r)) for r in rows]

    def answer(self, handoff_id: int, text: str, *, by: str) -> Handoff:
        """A person's answer: stored, and sent back into the asker's conversation."""
        if not isinstance(text, str) or not text.strip():
            raise AigcError("the answer is empty")
        if len(text) > MAX_ANSWER_CHARS:
            raise AigcError(f"the answer is {len(text)} characters; at most {MAX_ANSWER_CHARS}")
        if not by or not by.strip():
            raise AigcError("say who answers (by='name')")
        h = self.get(handoff_id)
        if h.status not in ("open", "answered"):
            raise AigcError(f"handoff #{handoff_id} is {h.status}; only open or answered "
                            "handoffs take an answer")
        # the status is checked again in the UPDATE itself: an approve or reject that lands
        # between the read above and this write must not be turned back into 'answered'
        cur = self._run("UPDATE handoffs SET answer = ?, answered_by = ?, status = 'answered', "
                        "answered_at = ? WHERE id = ? AND status IN ('open', 'answered')",
                        (text.strip(), by.strip(), time.time(), handoff_id))
        if cur.rowcount != 1:
            raise AigcError(f"handoff #{handoff_id} is {self.get(handoff_id).status}; only "
                            "open or answered handoffs take an answer")
        if h.conversation_id:
            self.add_message(h.conversation_id, "assistant", text.strip(), author=by.strip())
        return self.get(handoff_id)

    def approve(self, handoff_id: int, *, reindex: bool = True):
        """Add the answered handoff to the knowledge base. Returns ``(handoff, IndexReport or
        None)``; with ``reindex=False`` the document is written and indexed at the next
        ``build_index(None, index_dir)``."""
        h = self.get(handoff_id)
        if h.status != "answered":
            raise AigcError(f"handoff #{handoff_id} is {h.status}; only an answered handoff "
                            "can be approved")
        folder = self.index_dir / "approved"
        name = f"handoff-{handoff_id}.md"
        # claim it first, only if it is still answered with the answer read above: of two
        # approvals (studio and CLI), or an approval racing a new answer, exactly one wins and
        # the document holds the answer that was approved
        cur = self._run("UPDATE handoffs SET status = 'approved', document = ?, closed_at = ? "
                        "WHERE id = ? AND status = 'answered' AND answer = ?",
                        (f"approved/{name}", time.time(), handoff_id, h.answer))
        if cur.rowcount != 1:
            raise AigcError(f"handoff #{handoff_id} changed while being approved (now "
                            f"{self.get(handoff_id).status}); look at it again")
        question = " ".join(h.question.split())
        text = f"# {question}\n\n{h.answer}\n"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(folder / name)
        except OSError:
            self._run("UPDATE handoffs SET status = 'answered', document = NULL, closed_at = NULL "
                      "WHERE id = ?", (handoff_id,))
            raise
        report = None
        if reindex:
            from aigc.apps.assistant.index import build_index

            try:
                report = build_index(None, self.index_dir, progress=False)
            except AigcError as exc:  # not in the knowledge base: not approved, can be retried
                (folder / name).unlink(missing_ok=True)
                self._run("UPDATE handoffs SET status = 'answered', document = NULL, "
                          "closed_at = NULL WHERE id = ? AND status = 'approved'", (handoff_id,))
                raise AigcError(f"handoff #{handoff_id} was not approved: re-indexing failed: "
                                f"{exc}") from exc
        return self.get(handoff_id), report

    def reject(self, handoff_id: int) -> Handoff:
        h = self.get(handoff_id)
        if h.status in ("approved", "rejected"):
            raise AigcError(f"handoff #{handoff_id} is already {h.status}")
        cur = self._run("UPDATE handoffs SET status = 'rejected', closed_at = ? WHERE id = ? "
                        "AND status IN ('open', 'answered')", (time.time(), handoff_id))
        if cur.rowcount != 1:
            raise AigcError(f"handoff #{handoff_id} is already {self.get(handoff_id).status}")
        return self.get(handoff_id)
