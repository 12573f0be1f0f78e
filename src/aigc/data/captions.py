"""Class names, their words in English and Chinese, and templated training captions.

Text-conditional image models are trained on captions made from class names: each class has
English and Chinese names (several synonyms each) and each caption template places one of them
in a sentence ("a photo of an ankle boot", "handwritten digit seven", "一只短靴", "手写数字七").
:func:`caption_bank` lists every (caption, class) pair for a dataset; models embed the bank once
with MiniLM and draw a random caption of the right class per training example.

:func:`bilingual_glossary` maps each Chinese class word and numeral to an English word (models
gloss prompts with it: :func:`aigc.models.pretrained.gloss_for_minilm`).

:func:`resolve_class` turns what a person types (``7``, ``seven``, ``sneaker``, ``ankle-boot``,
``运动鞋``) into a class index, or raises :class:`~aigc.errors.ConfigError` listing the known names.
"""

from __future__ import annotations

import re

from aigc.errors import ConfigError

_DIGITS_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DIGITS_ZH = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]

# Per dataset: one entry per class, in label order: (English names, Chinese names).
# The first English name is the canonical one used in captions most often.
CLASS_WORDS: dict[str, list[tuple[list[str], list[str]]]] = {
    "mnist": [
        ([w, str(i)], [z, str(i)]) for i, (w, z) in enumerate(zip(_DIGITS_EN, _DIGITS_ZH, strict=True))
    ],
    "fashion-mnist": [
        (["t-shirt", "top", "tee", "t-shirt or top"], ["T恤", "上衣", "短袖"]),
        (["trouser", "trousers", "pants", "pair of trousers"], ["裤子", "长裤"]),
        (["pullover", "sweater", "jumper"], ["套头衫", "毛衣"]),
        (["dress", "frock"], ["连衣裙", "裙子"]),
        (["coat", "jacket", "overcoat"], ["外套", "大衣"]),
        (["sandal", "sandals"], ["凉鞋"]),
        (["shirt", "button-up shirt", "blouse"], ["衬衫", "衬衣"]),
        (["sneaker", "sneakers", "trainer", "running shoe"], ["运动鞋", "球鞋"]),
        (["bag", "handbag", "purse"], ["包", "手提包", "包包"]),
        (["ankle boot", "boot", "ankle boots"], ["短靴", "靴子", "踝靴"]),
    ],
}

_EN_DIGIT_TEMPLATES = [
    "handwritten digit {w}", "the digit {w}", "a handwritten {w}", "number {w}",
    "a picture of the number {w}", "the number {w} written by hand", "digit {w}",
    "a sketch of the digit {w}", "a scanned handwritten {w}", "{w}",
    "an image of a handwritten {w}", "someone wrote the number {w}", "a black and white digit {w}",
]
_ZH_DIGIT_TEMPLATES = [
    "手写数字{z}", "数字{z}", "一个手写的{z}", "写着{z}的图片", "手写的数字{z}", "{z}",
    "一张数字{z}的图片",
]
_EN_OBJECT_TEMPLATES = [
    "a photo of {a}", "{a}", "a picture of {a}", "a grayscale photo of {a}", "an image of {a}",
    "a small photo of {a}", "a product photo of {a}", "{w}", "a black and white photo of {a}",
    "a low resolution photo of {a}", "a catalogue picture of {a}", "this is {a}",
]
_ZH_OBJECT_TEMPLATES = [
    "一张{z}的照片", "{z}", "一件{z}", "一只{z}", "{z}的图片", "一张黑白的{z}照片", "这是{z}",
]


def _article(word: str) -> str:
    if word.startswith(("pair of", "pants", "trousers", "sneakers", "sandals", "ankle boots")):
        return word if word.startswith("pair") else f"a pair of {word}"
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def class_words(dataset: str, class_names: list[str]) -> list[tuple[list[str], list[str]]]:
    """English and Chinese names per class; for unknown datasets, the class names themselves."""
    words = CLASS_WORDS.get(dataset)
    if words is not None and len(words) == len(class_names):
        return words
    return [([name.lower()], []) for name in class_names]


def caption_bank(dataset: str, class_names: list[str]) -> list[tuple[str, int]]:
    """Every templated caption of every class as ``(caption, label)``, English then Chinese.

    Example:
        >>> from aigc.data.images import FASHION_CLASSES
        >>> ("a photo of an ankle boot", 9) in caption_bank("fashion-mnist", FASHION_CLASSES)
        True
    """
    words = class_words(dataset, class_names)
    digits = dataset == "mnist"
    en_t = _EN_DIGIT_TEMPLATES if digits else _EN_OBJECT_TEMPLATES
    zh_t = _ZH_DIGIT_TEMPLATES if digits else _ZH_OBJECT_TEMPLATES
    bank: list[tuple[str, int]] = []
    for label, (en, zh) in enumerate(words):
        for w in en:
            bank += [(t.format(w=w, a=_article(w)), label) for t in en_t]
        for z in zh:
            bank += [(t.format(z=z), label) for t in zh_t]
    seen: set[str] = set()
    unique = []
    for caption, label in bank:  # a digit's "7" and "七" templates may coincide across languages
        if caption not in seen:
            seen.add(caption)
            unique.append((caption, label))
    return unique


_ZH_NUMERALS = dict(zip(_DIGITS_ZH, _DIGITS_EN, strict=True))


def bilingual_glossary() -> dict[str, str]:
    """Chinese word -> English word for every Chinese class word of :data:`CLASS_WORDS` (its
    class's first English name) and every Chinese numeral 零..九, in dictionary order.

    :func:`aigc.models.pretrained.gloss_for_minilm` glosses prompts with the entries MiniLM
    cannot read.
    """
    pairs: dict[str, str] = {}
    for classes in CLASS_WORDS.values():
        for en, zh in classes:
            for z in zh:
                if not z.isascii():
                    pairs.setdefault(z, en[0])
    pairs.update({z: e for z, e in _ZH_NUMERALS.items() if z not in pairs})
    return pairs


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-/]+", " ", text.strip().lower())


def resolve_class(value: str | int, dataset: str, class_names: list[str]) -> int:
    """The class index for an index, a class name or one of its English/Chinese synonyms.

    Raises:
        ConfigError: the value names no class; the message lists the known names.
    """
    if not class_names:
        raise ConfigError("this model was trained without class labels; --class is not available")
    text = str(value).strip()
    if text.lstrip("-").isdigit() and dataset != "mnist":
        index = int(text)
        if 0 <= index < len(class_names):
            return index
        raise ConfigError(f"class index {index} is out of range 0..{len(class_names) - 1}; known "
                          f"classes: {', '.join(class_names)}")
    wanted = _norm(text)
    for index, name in enumerate(class_names):
        if _norm(name) == wanted:
            return index
    for index, (en, zh) in enumerate(class_words(dataset, class_names)):
        if wanted in {_norm(w) for w in en} | {_norm(z) for z in zh}:
            return index
    raise ConfigError(f"unknown class {text!r}; known classes: {', '.join(class_names)}"
                      + (" (or their index 0..9)" if dataset != "mnist" else ""))
