"""``aigc assistant``: index, ask (one question and interactive), handoff, bad input; and the
slow tier: the evaluation goals on the Debian FAQ demo base, and SmolLM2 answering."""

import json
import os

import pytest
from assistant_fixtures import make_kb

from aigc.cli import main

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def kb_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    kb = make_kb(root / "docs")
    assert main(["assistant", "index", str(kb), "--index", str(root / "index"), "--quiet"]) == 0
    return root / "index"


def test_index_then_ask_extractive_with_sources(kb_index, capsys):
    capsys.readouterr()
    assert main(["assistant", "ask", "What is the warranty on a kettle?", "--index",
                 str(kb_index), "--style", "extractive"]) == 0
    out = capsys.readouterr().out
    assert "two year" in out and "[1] faq.html § Warranty" in out


def test_ask_json_and_handoff_steps(kb_index, tmp_path, capsys):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(kb_index, index)
    capsys.readouterr()
    assert main(["assistant", "ask", "Who painted the Mona Lisa?", "--index", str(index),
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["handed_off"] and answer["handoff_id"] == 1
    assert main(["assistant", "handoff", "--index", str(index), "answer", "1",
                 "Leonardo da Vinci.", "--by", "bob"]) == 0
    assert main(["assistant", "handoff", "--index", str(index), "approve", "1"]) == 0
    capsys.readouterr()
    assert main(["assistant", "handoff", "--index", str(index), "list"]) == 0
    assert "#1 [approved]" in capsys.readouterr().out


def test_interactive_mode_keeps_going_after_a_bad_question(kb_index, tmp_path, monkeypatch,
                                                           capsys):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(kb_index, index)
    lines = iter(["x" * 5000, "What is the warranty on a kettle?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["assistant", "ask", "--index", str(index), "--style", "extractive"]) == 0
    out, err = capsys.readouterr()
    assert "5000 characters" in err and "two year" in out


@pytest.mark.parametrize("argv, message", [
    (["assistant", "ask", "q" * 100_000], "100000 characters"),
    (["assistant", "ask", "  "], "the question is empty"),
    (["assistant", "index", "/no/such/folder", "--index", "/tmp/unused-aigc-index"],
     "does not exist"),
    (["assistant", "index", "somewhere"], "--index DIR is required"),
    (["assistant", "index"], "either a FOLDER or --demo"),
    (["assistant", "ask", "hello", "--index", "/no/such/index"], "no assistant index"),
    (["assistant", "eval", "--answers", "-1"], "--answers must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_empty_folder_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["assistant", "index", str(tmp_path / "empty"), "--index",
                 str(tmp_path / "i")]) == 2
    assert "no supported documents" in capsys.readouterr().err


# ------------------------------------------------------------------------------ slow tier


@pytest.mark.slow
def test_demo_base_meets_the_retrieval_goals(tmp_path):
    from aigc.apps.assistant.answer import THRESHOLDS
    from aigc.apps.assistant.evaluate import escalation_report, load_evalset, retrieval_report
    from aigc.apps.assistant.index import DEBIAN_FAQ, build_index, demo_files
    from aigc.apps.assistant.retrieve import Retriever

    build_index(DEBIAN_FAQ, tmp_path / "demo", files=demo_files(), progress=False)
    r = Retriever(tmp_path / "demo")
    items = load_evalset()
    hybrid = retrieval_report(r, items)["hybrid"]
    assert hybrid["en"]["recall@5"] >= 0.90 and hybrid["zh"]["recall@5"] >= 0.80
    esc = escalation_report(r, items, THRESHOLDS)
    for lang in ("en", "zh"):
        assert esc[lang]["in_use"]["oos_handed_off"] >= 0.9
        assert esc[lang]["in_use"]["in_scope_handed_off"] <= 0.1


@pytest.mark.slow
def test_smollm2_answers_a_faq_question(tmp_path):
    from aigc.apps.assistant.answer import Assistant
    from aigc.apps.assistant.index import DEBIAN_FAQ, build_index, demo_files

    build_index(DEBIAN_FAQ, tmp_path / "demo", files=demo_files(), progress=False)
    ans = Assistant(tmp_path / "demo").ask("How do I put a package on hold?")
    assert not ans.handed_off and ans.text.strip()
    assert ans.citations and ans.timings["generation_s"] > 0
