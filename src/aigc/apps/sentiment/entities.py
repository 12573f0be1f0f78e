"""Which entities a text talks about: cashtags, configured keywords and names, and Chinese stocks
by name or six-digit code.

    tagger = EntityTagger(keywords={"Acme": ["Acme Corp", "ACME Inc"]})
    tagger.tag("$ACME jumps; 贵州茅台(600519) flat")   # ['$ACME', '600519']

Entity ids: a cashtag is upper-cased with its ``$`` (``$ACME``); a keyword entity is the name it
is configured under (``Acme``); a Chinese stock is its six-digit code (``600519``), whether the
text names it by code (``600519``, ``SH600519``, ``600519.SS``) or by name (``贵州茅台``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# A small example name table (code -> short name) of well-known A-shares, shipped so the monitor
# tags Chinese stocks out of the box; pass your own table (``cn_stocks`` in the config) for more.
EXAMPLE_CN_STOCKS: dict[str, str] = {
    "600519": "贵州茅台",
    "000858": "五粮液",
    "601318": "中国平安",
    "000001": "平安银行",
    "600036": "招商银行",
    "300750": "宁德时代",
}

# Exchange code prefixes of A-shares (Shanghai 60x/688, Shenzhen 000-003/300/301).
A_SHARE_PREFIXES = ("600", "601", "603", "605", "688", "000", "001", "002", "003", "300", "301")

# $ then a letter, up to 5 more letters/digits and an optional class (``$BRK.B``); "$100" is
# money, not a ticker.
CASHTAG = re.compile(r"(?<![A-Za-z0-9$])\$([A-Za-z][A-Za-z0-9]{0,5}(?:\.[A-Za-z])?)(?![A-Za-z0-9])")
# Six digits not inside a longer number, optionally with SH/SZ before or .SH/.SZ/.SS after.
CN_CODE = re.compile(r"(?<![0-9A-Za-z.])(?:SH|SZ|sh|sz)?(\d{6})(?:\.(?:SH|SZ|SS|sh|sz|ss))?(?![0-9])")
SIX_DIGITS = re.compile(r"^\d{6}$")


class EntityTagger:
    """Tags texts with entity ids (see the module docstring).

    Args:
        keywords: entity name -> the words or names that mean it (matched case-insensitively,
            as whole words for Latin text, as substrings for CJK text). The name itself counts.
        cn_stocks: six-digit code -> stock name (default :data:`EXAMPLE_CN_STOCKS`).
        any_a_share_code: also tag six-digit codes not in ``cn_stocks`` when they carry an
            A-share prefix (off by default: "100000" in a text is more often a number).
    """

    def __init__(self, keywords: Mapping[str, Sequence[str]] | None = None,
                 cn_stocks: Mapping[str, str] | None = None, any_a_share_code: bool = False):
        keywords = dict(keywords or {})
        self.cn_stocks = dict(EXAMPLE_CN_STOCKS if cn_stocks is None else cn_stocks)
        for code, name in self.cn_stocks.items():
            if not isinstance(code, str) or not SIX_DIGITS.match(code):
                raise ValueError(f"cn_stocks: {code!r} is not a six-digit stock code "
                                 "(write codes as strings, e.g. \"600519\")")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"cn_stocks: code {code} needs a non-empty name, got {name!r}")
        self.any_a_share_code = any_a_share_code
        self.names: dict[str, str] = {}  # entity id -> display name
        self.names.update({code: f"{name} ({code})" for code, name in self.cn_stocks.items()})
        alias_to_entity: dict[str, str] = {}
        for name, aliases in keywords.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"keywords: an entity name must be a non-empty string, "
                                 f"got {name!r}")
            if isinstance(aliases, str) or not all(isinstance(a, str) and a.strip()
                                                   for a in aliases):
                raise ValueError(f"keywords: {name!r} must map to a list of non-empty strings, "
                                 f"got {aliases!r}")
            self.names[name] = name
            for alias in (name, *aliases):
                alias_to_entity[alias.strip().lower()] = name
        for code, name in self.cn_stocks.items():
            alias_to_entity.setdefault(name.strip().lower(), code)
        self._alias_to_entity = alias_to_entity
        self._alias_re = None
        if alias_to_entity:
            # longest first, so "Acme Corp" wins over "Acme"; Latin aliases as whole words
            parts = []
            for alias in sorted(alias_to_entity, key=len, reverse=True):
                pattern = re.escape(alias)
                if alias[0].isascii() and alias[0].isalnum():
                    pattern = r"(?<![\w])" + pattern
                if alias[-1].isascii() and alias[-1].isalnum():
                    pattern = pattern + r"(?![\w])"
                parts.append(pattern)
            self._alias_re = re.compile("|".join(parts), re.IGNORECASE)

    def display(self, entity: str) -> str:
        """A readable name for an entity id (``贵州茅台 (600519)``)."""
        return self.names.get(entity, entity)

    def tag(self, text: str) -> list[str]:
        """The entity ids ``text`` mentions, each once, in order of first mention."""
        found: dict[str, int] = {}

        def add(entity: str, pos: int) -> None:
            found.setdefault(entity, pos)

        for m in CASHTAG.finditer(text):
            add("$" + m.group(1).upper(), m.start())
        for m in CN_CODE.finditer(text):
            code = m.group(1)
            if code in self.cn_stocks or (self.any_a_share_code
                                          and code.startswith(A_SHARE_PREFIXES)):
                add(code, m.start())
        if self._alias_re is not None:
            for m in self._alias_re.finditer(text):
                add(self._alias_to_entity[m.group(0).lower()], m.start())
        return sorted(found, key=found.__getitem__)
