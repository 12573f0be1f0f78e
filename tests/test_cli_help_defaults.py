"""`--help` shows the defaults that are really used (issue 16: it showed the dataclass defaults
while `aigc train gpt` ran with the family's TRAIN_DEFAULTS, and chat's temperature was 0.8 in
the help and 0.2 in use)."""

import dataclasses
import json
import re
from typing import get_type_hints

import pytest

from aigc.cli import build_parser, main
from aigc.config import TrainConfig, config_from_dict, parse_cli_value
from aigc.models import FAMILIES, family_module


def _help_defaults(argv, capsys, monkeypatch) -> dict[str, str]:
    """``{flag: shown default}`` from the real ``aigc ARGV --help`` output."""
    monkeypatch.setenv("COLUMNS", "250")  # one option per line (argparse wraps at the terminal)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    text = re.sub(r"\n {10,}", " ", capsys.readouterr().out)  # a help moved to its own line
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s+--([a-z0-9-]+)(?: \S+)?\s+.*\(default:? (.*)\)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def _check_config_help(shown: dict[str, str], cls: type, used: dict, from_data: dict) -> int:
    """Every field of ``cls``: the help text, fed back as the flag, gives the value used."""
    hints, checked = get_type_hints(cls), 0
    for f in dataclasses.fields(cls):
        flag = f.name.replace("_", "-")
        assert flag in shown, f"--{flag} shows no default"
        if f.name in from_data:
            assert shown[flag] == from_data[f.name]
            continue
        assert parse_cli_value(shown[flag], hints[f.name], f.name) == used[f.name], flag
        checked += 1
    return checked


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_help_shows_the_family_defaults(family, capsys, monkeypatch):
    module = family_module(family)
    shown = _help_defaults(["train", family], capsys, monkeypatch)
    train = config_from_dict(TrainConfig, dict(getattr(module, "TRAIN_DEFAULTS", {})),
                             where="training config")
    assert _check_config_help(shown, TrainConfig, dataclasses.asdict(train), {}) \
        == len(dataclasses.fields(TrainConfig))
    from_data = getattr(module, "MODEL_FROM_DATA", {})
    model_defaults = {f.name: f.default for f in dataclasses.fields(module.CONFIG_CLASS)}
    model_defaults.update(getattr(module, "MODEL_DEFAULTS", {}))
    _check_config_help(shown, module.CONFIG_CLASS, model_defaults, from_data)


@pytest.mark.parametrize("family", ["gpt", "diffusion"])
def test_finetune_help_shows_the_finetune_defaults(family, capsys, monkeypatch):
    from aigc.cli.finetune import _train_config

    shown = _help_defaults(["finetune", family], capsys, monkeypatch)
    argv = ["finetune", family, "ckpt", "--out", "x"] + (["--data", "d"] if family == "gpt" else [])
    used = dataclasses.asdict(_train_config(build_parser().parse_args(argv), family))
    assert _check_config_help(shown, TrainConfig, used, {}) == len(dataclasses.fields(TrainConfig))
    assert shown["warmup-steps"] == "20"


def test_train_gpt_help_matches_what_a_run_records(tmp_path, capsys, monkeypatch):
    """A real run: every field left at its default in run.json is what --help says."""
    shown = _help_defaults(["train", "gpt"], capsys, monkeypatch)
    assert shown["steps"] == "3000" and shown["lr"] == "0.001" and shown["betas"] == "0.9,0.95"
    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n\n".join(["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                                   "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"] * 30
                                  + [f"第{i}首：春眠不觉晓，处处闻啼鸟。" for i in range(60)]),
                      encoding="utf-8")
    given = {"steps": "1", "context-length": "16", "width": "8", "layers": "1", "heads": "2",
             "batch-size": "4", "eval-batches": "1"}
    argv = ["train", "gpt", "--data", f"text:{corpus}", "--out", str(tmp_path / "run"),
            "--no-progress"] + [x for k, v in given.items() for x in (f"--{k}", v)]
    assert main(argv) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    from aigc.models.gpt import MODEL_FROM_DATA, GPTConfig

    for section, cls in (("model", GPTConfig), ("train", TrainConfig)):
        hints = get_type_hints(cls)
        for name, value in run[section].items():
            flag = name.replace("_", "-")
            if flag in given or name in MODEL_FROM_DATA:
                continue
            parsed = parse_cli_value(shown[flag], hints[name], name)
            assert json.loads(json.dumps(parsed)) == value, flag
    assert run["model"]["vocab_size"] > 0  # "0, the trained tokenizer's size"


def test_chat_and_generate_help_show_the_sampling_defaults_used(capsys, monkeypatch):
    from aigc.cli.generate import sampling_params

    for command, extra in (("chat", []), ("generate", ["ckpt"])):
        shown = _help_defaults([command], capsys, monkeypatch)
        params = sampling_params(build_parser().parse_args([command, *extra]))
        for flag in ("max-tokens", "temperature", "top-k", "top-p", "repetition-penalty"):
            assert float(shown[flag]) == getattr(params, flag.replace("-", "_")), (command, flag)
    assert _help_defaults(["chat"], capsys, monkeypatch)["temperature"] == "0.2"
