"""No number typed by hand: every number the findings prose quotes is in the file it cites.

The convention (docs/findings/README.md, "What the experiments found", says it too):

- The quoting text is README.md's "What the experiments found" section and everything of
  docs/findings/README.md from its "What the experiments found" heading on. It is cut into
  units: a paragraph, a bullet item, or a table (a table is one unit).
- A unit that quotes a number cites the file(s) it quotes from by naming them: a link or a
  code span ending in `<name>.md`, where `docs/findings/<name>.md` is a shipped compare output.
- Every number written with a decimal point in such a unit (signs `+`, `-`, `−` kept) is a
  quote and must be one of the cited files' numbers rounded to the quote's decimals, either as
  printed (0.023 from +0.0233) or ×100 (−4.3 points from -0.0428), and the file must print it
  with at least that many decimals (so "1.0" never matches a λ of 1). A number written after
  `~` is an approximate summary and one after `<`, `>`, `≤` or `≥` a threshold, not quotes. A
  unit with a decimal number and no cited file fails.

So a number copied from another file (another Holm family) or from an older run fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = ROOT / "docs" / "findings"
SECTION = "## What the experiments found"

# A decimal number in prose: optional sign, digits, a point, digits; not part of a word,
# a version or a path, not after `~` (an approximate summary) and not after a comparison
# (`p < 0.05`, `η ≤ 0.03`: a threshold).
_QUOTE = re.compile(r"(?<![\w.~<>≤≥])(?<![~<>≤≥] )([+\-−]?)(\d+\.\d+)(?![\w.]*\d)")
# Any number in a compare output (integers too: they are never matched by a decimal quote).
_NUMBER = re.compile(r"(?<![\w.])([+\-−]?)(\d+(?:\.\d+)?)")
_CITED = re.compile(r"([A-Za-z0-9_]+)\.md\b")
_CODE = re.compile(r"`[^`]*`")


@dataclass(frozen=True)
class Number:
    """A number as printed: its value and how many decimals it was printed with."""

    value: Decimal
    decimals: int

    @classmethod
    def parse(cls, sign: str, digits: str) -> Number:
        value = Decimal(digits)
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        return cls(-value if sign in ("-", "−") else value, decimals)

    def __str__(self) -> str:
        return f"{self.value:.{self.decimals}f}"


@cache
def file_numbers(name: str) -> tuple[Number, ...]:
    """Every number a shipped compare output prints."""
    text = (FINDINGS / f"{name}.md").read_text(encoding="utf-8")
    return tuple(Number.parse(s, d) for s, d in _NUMBER.findall(text))


def shipped() -> set[str]:
    """The compare outputs of docs/findings/ (every .md there but its README)."""
    return {p.stem for p in FINDINGS.glob("*.md") if p.name != "README.md"}


def section(text: str) -> str:
    """The findings section: from its heading to the next heading of the same level."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def units(text: str) -> list[str]:
    """Paragraphs, bullet items and whole tables of a markdown text."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").splitlines()
        if not lines:
            continue
        if all(line.lstrip().startswith("|") for line in lines):
            out.append(block)
            continue
        current: list[str] = []
        for line in lines:
            if line.startswith(("- ", "* ")) and current:
                out.append("\n".join(current))
                current = []
            current.append(line)
        out.append("\n".join(current))
    return out


def matches(quote: Number, candidate: Number) -> bool:
    """Whether `candidate` (from a file), rounded to the quote's decimals, is the quote."""
    half = Decimal(5) * Decimal(10) ** -(quote.decimals + 1)
    for scale, extra in ((Decimal(1), 0), (Decimal(100), 2)):
        if candidate.decimals < quote.decimals + extra:
            continue
        if abs(candidate.value * scale - quote.value) <= half:
            return True
    return False


def problems(unit: str, known: set[str]) -> list[str]:
    """What is wrong with the quotes of one unit (empty: every quote is in a cited file)."""
    cited = sorted({m for m in _CITED.findall(unit) if m in known})
    prose = _CODE.sub(lambda m: " " if not _CITED.search(m.group()) else m.group(), unit)
    prose = re.sub(r"\]\([^)]*\)", "]", prose)  # link targets are not quotes
    quotes = [Number.parse(s, d) for s, d in _QUOTE.findall(_CODE.sub(" ", prose))]
    if not quotes:
        return []
    first = " ".join(unit.split())[:70]
    if not cited:
        return [f"{first!r}: quotes {quotes[0]} but cites no docs/findings file"]
    pool = [n for name in cited for n in file_numbers(name)]
    return [
        f"{first!r}: {q} is in none of {', '.join(f'{c}.md' for c in cited)}"
        for q in quotes
        if not any(matches(q, n) for n in pool)
    ]


def quoting_texts() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    findings = (FINDINGS / "README.md").read_text(encoding="utf-8")
    return {
        "README.md": section(readme),
        "docs/findings/README.md": findings[findings.index(SECTION) :],
    }


@pytest.mark.parametrize("doc", ["README.md", "docs/findings/README.md"])
def test_every_quoted_number_is_in_the_file_it_cites(doc: str) -> None:
    known = shipped()
    text = quoting_texts()[doc]
    found = [p for unit in units(text) for p in problems(unit, known)]
    assert not found, "\n".join(found)
    # The check reads something: the section quotes numbers and cites files.
    assert any(_QUOTE.search(u) and _CITED.search(u) for u in units(text))


def test_a_quote_from_another_family_or_an_older_run_fails() -> None:
    known = shipped()
    # The tuned coupled − decoupled accuracy gap: Holm 0.1754 over lr_wd_grid's 7 tests.
    right = "accuracy −4.3 points [−8.3, −0.3] (Holm p 0.175; [grid](lr_wd_grid.md))"
    assert problems(right, known) == []
    # The same gap with the Holm p of an older 4-test family: 0.088 is in no cited file.
    older = right.replace("0.175", "0.088")
    assert problems(older, known) == [
        f"{' '.join(older.split())[:70]!r}: 0.088 is in none of lr_wd_grid.md"
    ]
    # The nominal family's Holm p of that comparison (1.0000) is not lr_wd_grid's.
    nominal = right.replace("0.175", "1.0000")
    assert problems(nominal, known) == [
        f"{' '.join(nominal.split())[:70]!r}: 1.0000 is in none of lr_wd_grid.md"
    ]
    assert problems(nominal.replace("lr_wd_grid.md", "lr_wd_grid_nominal.md"), known) == []
    # A decimal quote without a cited file fails; an approximate one (~) is no quote.
    assert problems("dispersion +0.023 over the grid", known)[0].endswith(
        "cites no docs/findings file"
    )
    assert problems("at most ~0.02 of dispersion", known) == []


def test_the_shipped_text_with_the_old_holm_p_fails() -> None:
    known = shipped()
    text = quoting_texts()["docs/findings/README.md"]
    old = text.replace("(Holm p 0.175)", "(Holm p 0.088)", 1)
    assert old != text
    found = [p for unit in units(old) for p in problems(unit, known)]
    assert len(found) == 1 and found[0].endswith(": 0.088 is in none of lr_wd_grid.md")


def test_rounding_and_scaling_follow_the_printed_decimals() -> None:
    def num(text: str) -> Number:
        m = _NUMBER.fullmatch(text)
        assert m is not None
        return Number.parse(m.group(1), m.group(2))

    assert matches(num("+0.023"), num("+0.0233"))
    assert matches(num("−4.3"), num("-0.0428"))  # points from a fraction
    assert matches(num("0.009"), num("0.0088"))
    assert not matches(num("0.009"), num("0.0163"))
    assert not matches(num("+0.023"), num("-0.0233"))  # the sign is part of the quote
    assert not matches(num("1.0"), num("1"))  # a λ of 1 is not a p of 1.0
    assert not matches(num("5.0"), num("0.05"))  # ×100 needs two more printed decimals
    assert matches(num("5.0"), num("0.0500"))
    assert matches(num("55.2"), num("55.2"))
