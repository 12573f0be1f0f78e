"""Answers with citations, handoffs, conversations, and the evaluation helpers. The model is
replaced by a recording stand-in (SmolLM2 runs in the slow tier and the benchmark)."""

import os
from pathlib import Path

import pytest
from assistant_fixtures import make_kb

from aigc.apps.assistant.answer import Assistant, drop_repeats
from aigc.apps.assistant.evaluate import (
    EvalItem,
    calibrate,
    is_right,
    load_evalset,
    section_number,
    source_stem,
)
from aigc.apps.assistant.handoff import HandoffQueue
from aigc.apps.assistant.index import DEBIAN_FAQ, build_index, demo_files
from aigc.apps.assistant.ingest import read_sections
from aigc.errors import AigcError

os.environ.setdefault("OMP_NUM_THREADS", "1")


class Recorder:
    """Stands in for SmolLM2: returns ``reply`` and keeps the messages it was given."""

    def __init__(self, reply: str):
        self.reply, self.calls = reply, []

    def __call__(self, messages):
        self.calls.append(messages)
        return self.reply


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("kb")
    kb = make_kb(root / "docs")
    build_index(kb, root / "index", progress=False)
    return root / "index"


@pytest.fixture
def fresh_index(tmp_path, index):
    """A private copy of the module index (handoffs write into it)."""
    import shutil

    shutil.copytree(index, tmp_path / "index")
    return tmp_path / "index"


def test_answer_cites_the_numbered_passages(fresh_index):
    gen = Recorder("Items can be returned within 30 days for a full refund [1].")
    a = Assistant(fresh_index, generator=gen)
    ans = a.ask("How many days do I have to send an item back for a refund?")
    assert not ans.handed_off and ans.cited_by_model
    assert ans.text.startswith("Items can be returned")
    assert [(c.n, c.section) for c in ans.citations] == [(1, "Returns")]
    assert ans.citations[0].chunk_id == ans.passages[0].chunk_id
    prompt = gen.calls[0][-1]["content"]
    assert "[1] (Returns)" in prompt and "Question: How many days" in prompt
    assert set(ans.timings) == {"retrieval_s", "generation_s"}
    assert HandoffQueue(fresh_index / "assistant.sqlite3").list() == []


def test_uncited_reply_falls_back_to_the_top_passage(fresh_index):
    ans = Assistant(fresh_index, generator=Recorder("Thirty days.")).ask(
        "How long do I have to return an item?")
    assert not ans.cited_by_model and [c.n for c in ans.citations] == [1]
    assert ans.citations[0].section == "Returns"


def test_out_of_scope_question_is_handed_off_without_calling_the_model(fresh_index):
    gen = Recorder("should not be called")
    a = Assistant(fresh_index, generator=gen)
    ans = a.ask("Who painted the Mona Lisa?")
    assert ans.handed_off and gen.calls == [] and ans.citations == []
    assert "below the en threshold" in ans.reason and ans.handoff_id == 1
    assert "I don't know" in ans.text and "#1" in ans.text
    h = a.queue.get(1)
    assert (h.status, h.question) == ("open", "Who painted the Mona Lisa?")
    zh = a.ask("蒙娜丽莎是谁画的？")
    assert zh.handed_off and "我在现有资料中找不到答案" in zh.text


def test_model_saying_it_does_not_know_is_a_handoff(fresh_index):
    a = Assistant(fresh_index, generator=Recorder("I don't know."))
    ans = a.ask("What is the warranty on the kettle heating element?")
    assert ans.handed_off and ans.reason == "the model said it does not know"
    assert a.queue.list("open")[0].id == ans.handoff_id


def test_handoff_lifecycle_puts_the_approved_answer_into_the_knowledge_base(fresh_index):
    a = Assistant(fresh_index, generator=Recorder("We do [1]."))
    cid = a.queue.new_conversation()
    first = a.ask("Do you deliver parcels to Antarctica research stations?", conversation_id=cid)
    assert first.handed_off
    q = a.queue
    with pytest.raises(AigcError, match="only an answered handoff"):
        q.approve(first.handoff_id)
    with pytest.raises(AigcError, match="empty"):
        q.answer(first.handoff_id, "  ", by="alice")
    h = q.answer(first.handoff_id, "Yes: Antarctica research stations get parcels by the "
                 "winter supply ship.", by="alice")
    assert (h.status, h.answered_by) == ("answered", "alice")
    history = q.history(cid)
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    assert history[-1]["author"] == "alice" and "supply ship" in history[-1]["content"]
    h, report = q.approve(first.handoff_id)
    assert h.status == "approved" and h.document == f"approved/handoff-{h.id}.md"
    assert report.files_read == [h.document] and report.chunks_new == 1
    with pytest.raises(AigcError, match="already approved"):
        q.reject(h.id)
    a.reload()
    again = a.ask("Do you deliver parcels to Antarctica research stations?")
    assert not again.handed_off
    assert again.citations[0].source == h.document
    # a later full re-index keeps the approved document
    build_index(None, fresh_index, progress=False)
    a.reload()
    assert a.retriever.search("Antarctica parcels", k=1)[0].source == h.document


def test_conversation_history_reaches_the_model(fresh_index):
    gen = Recorder("Within 30 days [1].")
    a = Assistant(fresh_index, generator=gen)
    cid = a.queue.new_conversation()
    a.ask("How long do I have to return an item?", conversation_id=cid)
    a.ask("And what about the kettle warranty?", conversation_id=cid)
    second = gen.calls[1]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == "How long do I have to return an item?"
    assert len(a.queue.history(cid)) == 4
    with pytest.raises(AigcError, match="no conversation"):
        a.ask("hello", conversation_id="nope")


def test_extractive_style_quotes_the_best_passage(fresh_index):
    a = Assistant(fresh_index, style="extractive", generator=Recorder("unused"))
    ans = a.ask("What is the warranty on a kettle?")
    assert ans.text.endswith("[1]") and "two year" in ans.text
    assert ans.citations[0].section == "Warranty" and ans.timings["generation_s"] == 0


def test_bad_arguments_are_refused(fresh_index):
    with pytest.raises(AigcError, match="100000 characters"):
        Assistant(fresh_index, generator=Recorder("x")).ask("y" * 100_000)
    with pytest.raises(AigcError, match="style must be"):
        Assistant(fresh_index, style="poetic")
    with pytest.raises(AigcError, match="k must be"):
        Assistant(fresh_index, k=0)
    assert HandoffQueue(fresh_index / "assistant.sqlite3").list() == []  # nothing stored


def test_drop_repeats():
    assert drop_repeats("We ship. We ship. Yes [1]. And then") == "We ship. Yes [1]."
    assert drop_repeats("可以。可以。使用 apt [1]。然后") == "可以。使用 apt [1]。"


# ---------------------------------------------------------------------------- evaluation


def test_labels_match_sections_and_subsections():
    assert source_stem("zh-cn/pkg-basics.zh-cn.html") == "pkg-basics"
    assert source_stem("kernel.en.html") == "kernel"
    assert section_number("7.12. How do I put a package on hold?") == "7.12"
    assert section_number("第 7 章 Debian 软件包管理系统基础") == ""
    labels = (("support", "12.2"),)
    assert is_right("support.en.html", "12.2.1. Mailing lists", labels)
    assert not is_right("support.en.html", "12.20. Other", labels)
    assert not is_right("software.en.html", "12.2. x", labels)


def test_calibrate_picks_the_separating_threshold():
    items = [EvalItem(str(i), "en", "direct", "q", (("a", "1"),)) for i in range(4)]
    items += [EvalItem(f"o{i}", "en", "out_of_scope", "q", ()) for i in range(3)]
    conf = [0.6, 0.7, 0.5, 0.9, 0.1, 0.2, 0.3]
    t = calibrate(conf, items)
    assert 0.3 < t <= 0.5


def test_evalset_is_big_enough_and_every_label_exists_in_the_demo_base():
    items = load_evalset()
    count = {(lang, scope): sum(it.lang == lang and it.in_scope == scope for it in items)
             for lang in ("en", "zh") for scope in (True, False)}
    assert count[("en", True)] >= 40 and count[("zh", True)] >= 40
    assert count[("en", False)] + count[("zh", False)] >= 20
    assert sum(it.kind == "paraphrase" for it in items) >= 20
    assert len({it.id for it in items}) == len(items)
    if not (DEBIAN_FAQ / "zh-cn").is_dir():
        pytest.skip("Debian packages debian-faq and debian-faq-zh-cn are not installed")
    numbers = {"en": set(), "zh": set()}
    for name in demo_files():
        lang = "zh" if name.startswith("zh-cn/") else "en"
        for s in read_sections(Path(DEBIAN_FAQ) / name):
            numbers[lang].add((source_stem(name), section_number(s.heading)))
    for it in items:
        for label in it.answers:
            assert label in numbers[it.lang], (it.id, label)


def test_demo_without_the_debian_packages_names_them(tmp_path):
    with pytest.raises(AigcError, match="debian-faq and debian-faq-zh-cn"):
        demo_files(tmp_path)
