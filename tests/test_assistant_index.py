"""Knowledge base: reading formats, chunking, duplicates, incremental re-index, retrieval,
bad input."""

import json
import os

import pytest
from assistant_fixtures import PDF_TEXT, make_kb

from aigc.apps.assistant.index import bm25_tokens, build_index, load_chunks
from aigc.apps.assistant.ingest import chunk_section, language_of, read_sections
from aigc.apps.assistant.retrieve import MAX_QUERY_CHARS, Retriever
from aigc.errors import AigcError

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("kb")
    kb = make_kb(root / "docs")
    report = build_index(kb, root / "index", progress=False)
    return kb, root / "index", report


def test_index_reads_every_format_and_reports_what_it_could_not(built):
    kb, index, report = built
    assert set(report.files_read) == {"guide.md", "notes.txt", "faq.html", "zh.md", "manual.pdf",
                                      "archive/old.txt.gz", "archive/guide-copy.md"}
    assert "no text layer" in report.unreadable["scan.pdf"]
    assert "not UTF-8" in report.unreadable["latin1.txt"]
    assert "image.png" not in report.unreadable  # unsupported types are skipped, not errors
    assert report.duplicates_dropped >= 2  # guide-copy.md repeats both sections of guide.md
    stored = load_chunks(index)
    chunks = [c for c in stored if c["duplicate_of"] is None]
    assert len(chunks) == report.chunks_total == len(Retriever(index))
    assert len(stored) - len(chunks) == report.duplicates_dropped
    sections = {(c["source"], c["section"]) for c in chunks}
    assert ("faq.html", "Warranty") in sections
    # one copy of each duplicated section is kept (the first in path order)
    assert {s for s in sections if s[1] in ("Returns", "Shipping")} == {
        ("archive/guide-copy.md", "Returns"), ("archive/guide-copy.md", "Shipping")}
    assert ("notes.txt", "2. Gift cards") in sections
    assert ("manual.pdf", "page 1") in sections
    html_text = " ".join(c["text"] for c in chunks if c["source"] == "faq.html")
    assert "tracking" not in html_text and "Prev Next" not in html_text  # script, navigation
    assert any(PDF_TEXT in c["text"] for c in chunks)
    for name in ("manifest.json", "chunks.jsonl", "embeddings.npy", "dense.faiss", "bm25.json"):
        assert (index / name).is_file()


def test_reindex_reads_only_changed_files(tmp_path):
    kb = make_kb(tmp_path / "docs")
    first = build_index(kb, tmp_path / "index", progress=False)
    ids_before = {c["chunk_id"]: c for c in load_chunks(tmp_path / "index")}
    again = build_index(kb, tmp_path / "index", progress=False)
    assert again.files_read == [] and again.chunks_new == 0
    assert len(again.files_unchanged) == len(first.files_read)
    (kb / "notes.txt").write_text("1. Opening hours\nThe desk now opens at eight.\n",
                                  encoding="utf-8")
    (kb / "faq.html").unlink()
    third = build_index(kb, tmp_path / "index", progress=False)
    assert third.files_read == ["notes.txt"]
    assert third.files_removed == ["faq.html"]
    after = {c["chunk_id"]: c for c in load_chunks(tmp_path / "index")}
    assert not any(c["source"] == "faq.html" for c in after.values())
    assert any("opens at eight" in c["text"] for c in after.values())
    kept = [cid for cid, c in ids_before.items() if c["source"] == "guide.md"]
    assert kept and all(cid in after for cid in kept)  # unchanged files keep their chunks
    assert Retriever(tmp_path / "index").search("when does the desk open")[0].source == "notes.txt"
    # the copy that was searched goes away: the duplicate left in guide.md takes over, unread
    (kb / "archive" / "guide-copy.md").unlink()
    fourth = build_index(kb, tmp_path / "index", progress=False)
    assert fourth.files_read == [] and fourth.duplicates_dropped == 0
    hit = Retriever(tmp_path / "index").search("refund for a returned item", k=1)[0]
    assert (hit.source, hit.section) == ("guide.md", "Returns")


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "dense"])
def test_retrieval_finds_the_answering_chunk(built, mode):
    _, index, _ = built
    r = Retriever(index)
    top = r.search("How many days do I have to send an item back for a refund?", k=3, mode=mode)
    assert top[0].section == "Returns"
    assert [h.rank for h in top] == list(range(1, len(top) + 1)) and len(top) <= 3
    hit = r.search("how long is the blender motor guaranteed", k=1, mode=mode)[0]
    assert hit.source == "manual.pdf"


def test_chinese_questions_search_chinese_chunks_with_jieba(built):
    _, index, _ = built
    r = Retriever(index)
    for mode in ("bm25", "hybrid"):
        hits = r.search("买的东西怎么退货？", k=2, mode=mode)
        assert hits[0].section == "退货政策" and hits[0].lang == "zh"
        assert all(h.lang == "zh" for h in hits)
    assert "退货" in bm25_tokens("怎么退货")
    assert bm25_tokens("Upgraded packages") == bm25_tokens("upgrade package")


def test_confidence_separates_in_scope_from_out_of_scope(built):
    _, index, _ = built
    r = Retriever(index)
    good = r.top_confidence(r.search("What is the warranty on a kettle?"))
    bad = r.top_confidence(r.search("Who painted the Mona Lisa?"))
    assert 0 <= bad < good <= 1


def test_chunks_overlap_and_respect_the_size():
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    pieces = chunk_section(text, size=300, overlap=60)
    assert all(len(p) <= 300 for p in pieces)
    for a, b in zip(pieces, pieces[1:]):
        assert b[:20] in a  # the next piece starts inside the previous one
    assert pieces[0].startswith("Sentence number 0") and pieces[-1].endswith("199 is here.")
    with pytest.raises(ValueError, match="overlap"):
        chunk_section(text, size=100, overlap=100)


def test_language_of():
    assert language_of("How do I install Debian?") == "en"
    assert language_of("如何安装 Debian？") == "zh"


def test_bad_folders_and_questions(tmp_path, built):
    with pytest.raises(AigcError, match="does not exist"):
        build_index(tmp_path / "missing", tmp_path / "i1", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AigcError, match="no supported documents"):
        build_index(tmp_path / "empty", tmp_path / "i2", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.pdf").write_bytes(b"%PDF-1.4 garbage")
    (bad / "b.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(AigcError, match=r"nothing .* could be indexed .*a\.pdf.*b\.txt"):
        build_index(bad, tmp_path / "i3", progress=False)
    assert not (tmp_path / "i3" / "manifest.json").exists()
    _, index, _ = built
    r = Retriever(index)
    with pytest.raises(AigcError, match="100000 characters"):
        r.search("x" * 100_000)
    assert MAX_QUERY_CHARS < 100_000
    with pytest.raises(AigcError, match="empty"):
        r.search("   ")
    with pytest.raises(AigcError, match="mode must be one of"):
        r.search("refund", mode="fuzzy")
    with pytest.raises(AigcError, match="not an assistant index"):
        Retriever(tmp_path)


def test_a_failed_reindex_loses_nothing(tmp_path):
    kb = make_kb(tmp_path / "docs")
    build_index(kb, tmp_path / "index", progress=False)
    before = (tmp_path / "index" / "chunks.jsonl").read_bytes()
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    for name in list(manifest["documents"]):  # every document turns unreadable
        (kb / name).write_bytes(b"\xff\xfe not utf-8")
    (kb / "manual.pdf").write_bytes(b"%PDF-1.4 broken")
    with pytest.raises(AigcError, match="could be indexed"):
        build_index(kb, tmp_path / "index", progress=False)
    assert (tmp_path / "index" / "chunks.jsonl").read_bytes() == before
    assert len(Retriever(tmp_path / "index")) > 0


def test_read_sections_names_the_problem(tmp_path):
    p = tmp_path / "x.txt.gz"
    p.write_bytes(b"not gzip")
    with pytest.raises(Exception, match="gzip"):
        read_sections(p)


def test_builds_of_one_index_take_turns(built, tmp_path):
    """Two processes re-indexing one folder (the studio approving a handoff while the CLI
    approves another) must not interleave their reads and writes: a build waits for the lock
    another holds on the index folder."""
    import fcntl
    import shutil
    import threading

    from aigc.apps.assistant.index import BUILD_LOCK

    index = tmp_path / "index"
    shutil.copytree(built[1], index)
    done = threading.Event()
    with open(index / BUILD_LOCK, "a") as held:  # another build holds the index
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(target=lambda: (build_index(None, index, progress=False),
                                             done.set()))
        t.start()
        assert not done.wait(1.5), "the build did not wait for the one in progress"
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(60)
    assert done.is_set() and len(Retriever(index)) > 0


def test_a_reader_waits_for_a_build_in_progress(built, tmp_path):
    """A Retriever (the studio reloading) must not read chunks.jsonl of one build and
    dense.faiss of the next: it waits while a build holds the index."""
    import fcntl
    import shutil
    import threading

    from aigc.apps.assistant.index import BUILD_LOCK

    index = tmp_path / "index"
    shutil.copytree(built[1], index)
    loaded = []
    with open(index / BUILD_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(target=lambda: loaded.append(Retriever(index)))
        t.start()
        t.join(1.5)
        assert not loaded, "the index was read while a build held it"
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(60)
    assert len(loaded) == 1 and len(loaded[0]) > 0
