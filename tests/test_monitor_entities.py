"""Entity tagging: cashtags, configured keywords and names, Chinese stock names and codes; and the
monitor's config file (YAML/JSON) with its refusals."""

import json

import pytest

from aigc.apps.sentiment.entities import EXAMPLE_CN_STOCKS, EntityTagger
from aigc.apps.sentiment.monitor import MonitorConfig, load_config


def test_cashtags_not_money():
    tagger = EntityTagger(cn_stocks={})
    assert tagger.tag("$ACME up 5%, $brk.b flat, paid $100 for $ACME") == ["$ACME", "$BRK.B"]
    assert tagger.tag("US$5 and a$b and $1000") == []


def test_keywords_whole_words_longest_first_case_insensitive():
    tagger = EntityTagger(keywords={"Acme": ["Acme Corp", "ACME Inc"], "Globex": ["globex"]},
                          cn_stocks={})
    assert tagger.tag("ACME CORP beats; acme again; globex sinks") == ["Acme", "Globex"]
    assert tagger.tag("Acmetronics and subglobex are other firms") == []


def test_chinese_stock_names_and_codes():
    tagger = EntityTagger()  # the example table
    text = "贵州茅台(600519)大涨，SZ000858 和 300750.SZ 也涨；1600519 不是代码；中国平安回落"
    assert tagger.tag(text) == ["600519", "000858", "300750", "601318"]
    assert tagger.display("600519") == f"{EXAMPLE_CN_STOCKS['600519']} (600519)"
    # a six-digit code outside the table is a number unless asked for
    assert tagger.tag("688981 涨停") == []
    assert EntityTagger(any_a_share_code=True).tag("688981 涨停; 123456") == ["688981"]


def test_custom_table_and_bad_tables():
    tagger = EntityTagger(cn_stocks={"601988": "中国银行"})
    assert tagger.tag("中国银行发布年报") == ["601988"]
    with pytest.raises(ValueError, match="six-digit"):
        EntityTagger(cn_stocks={"60198": "x"})
    with pytest.raises(ValueError, match="list of non-empty strings"):
        EntityTagger(keywords={"Acme": "acme"})


def test_config_yaml_json_and_refusals(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text("keywords:\n  Acme: [Acme Corp]\ncn_stocks:\n  '601988': 中国银行\n"
                 "sentiment_h: 6\n", encoding="utf-8")
    cfg = load_config(y)
    assert cfg.sentiment_h == 6 and cfg.keywords == {"Acme": ("Acme Corp",)}
    assert cfg.tagger().tag("Acme Corp and 中国银行") == ["Acme", "601988"]
    j = tmp_path / "m.json"
    j.write_text(json.dumps({"volume_bucket_events": 50}), encoding="utf-8")
    assert load_config(j).volume_bucket_events == 50
    j.write_text(json.dumps({"sentiment_hh": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sentiment_hh'\]"):
        load_config(j)
    j.write_text(json.dumps({"sentiment_alpha": 2}), encoding="utf-8")
    with pytest.raises(ValueError, match="sentiment_alpha must be in"):
        load_config(j)
    j.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(j)
    with pytest.raises(ValueError, match="sentiment_warmup"):
        MonitorConfig(sentiment_warmup=1)


def test_scorer_specs():
    from aigc.apps.sentiment.monitor import load_scorers

    assert set(load_scorers("vader")) == {"*"}
    assert set(load_scorers("en=vader, zh=snownlp")) == {"en", "zh"}
    with pytest.raises(ValueError, match="one for each of en and zh"):
        load_scorers("en=vader")
    with pytest.raises(ValueError, match="language 'fr'"):
        load_scorers("fr=vader")
    with pytest.raises(ValueError, match="unknown sentiment scorer"):
        load_scorers("nope")
