"""Handoffs are de-duplicated while open and bounded per client; queue files made before
these columns existed still open."""

from __future__ import annotations

import sqlite3

import pytest

from aigc.apps.assistant.handoff import HandoffLimit, HandoffQueue


def _open(q: HandoffQueue, question: str, **kw):
    return q.open(question, reason="low confidence", confidence=0.1, **kw)


def test_the_same_open_question_is_one_handoff(tmp_path):
    q = HandoffQueue(tmp_path / "a.sqlite3")
    first = _open(q, "Do you ship to Mars?")
    again = _open(q, "  do you SHIP to   mars? ")
    assert again.id == first.id and again.asked == 2
    assert [h.id for h in q.list("open")] == [first.id]
    # another conversation keeps its own handoff: the answer goes into that conversation
    cid = q.new_conversation()
    mine = _open(q, "Do you ship to Mars?", conversation_id=cid)
    assert mine.id != first.id and mine.asked == 1
    assert _open(q, "do you ship to mars?", conversation_id=cid).id == mine.id
    # once answered, the question asked again is a new handoff
    q.answer(first.id, "No.", by="alice")
    assert _open(q, "Do you ship to Mars?").id not in (first.id, mine.id)
    assert "client" not in first.to_dict() and first.to_dict()["asked"] == 1


def test_a_client_past_its_limit_opens_nothing(tmp_path):
    q = HandoffQueue(tmp_path / "a.sqlite3", max_open_per_client=2)
    _open(q, "one?", client="key:a")
    _open(q, "two?", client="key:a")
    with pytest.raises(HandoffLimit, match=r"2 open handoffs from the last hour \(limit 2\)"):
        _open(q, "three?", client="key:a")
    assert len(q.list()) == 2  # nothing written
    assert _open(q, "two?", client="key:a").asked == 2  # a repeat is not a new handoff
    assert _open(q, "three?", client="key:b").client == "key:b"  # others are not limited
    q.answer(q.list("open")[0].id, "Yes.", by="alice")  # answered: no longer counts
    assert _open(q, "four?", client="key:a").status == "open"
    with pytest.raises(Exception, match="max_open_per_client must be >= 1"):
        HandoffQueue(tmp_path / "b.sqlite3", max_open_per_client=0)


def test_a_queue_file_from_before_the_new_columns_opens(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE conversations (id TEXT PRIMARY KEY, created REAL NOT NULL);
        CREATE TABLE handoffs (id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT REFERENCES conversations(id), question TEXT NOT NULL,
            reason TEXT NOT NULL, confidence REAL NOT NULL, status TEXT NOT NULL DEFAULT 'open',
            answer TEXT, answered_by TEXT, document TEXT, created REAL NOT NULL,
            answered_at REAL, closed_at REAL);
        INSERT INTO handoffs (question, reason, confidence, created)
            VALUES ('Old question?', 'low', 0.2, 1.0);""")
    db.commit()
    db.close()
    q = HandoffQueue(path)
    old = q.get(1)
    assert old.question == "Old question?" and old.asked == 1 and old.status == "open"
    assert _open(q, "New question?", client="x").id == 2
