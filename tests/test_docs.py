"""The docs cannot drift: the generated key table, every command, every link, one copy of a table.

Commands (the lines of ```bash blocks; untagged blocks are output) are parsed, never run:
`fedadamw …` against the CLI's real argparse parser, `python -m
fedadamw.…` against the module's own parser (its `parse_args` stops the call), `flwr …` against
Flower's real click commands, `make …` against the Makefile's targets and variables, and a script
path must exist.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedadamw import cli, docgen
from fedadamw.config import Config
from fedadamw.data.registry import REGISTRY
from fedadamw.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\S*)\s*$")
SHELL_FENCES = ("bash", "sh", "shell", "console")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(language, lines) of every fenced block of a markdown file."""
    lang: str | None = None
    lines: list[str] = []
    for line in path.read_text().splitlines():
        match = FENCE.match(line.strip())
        if match and lang is None:
            lang, lines = match.group(1), []
        elif line.strip() == "```" and lang is not None:
            yield lang, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def _prose(path: Path) -> list[str]:
    """The lines of a markdown file outside its fenced blocks."""
    out, inside = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return out


def _command_lines(lines: list[str]) -> Iterator[str]:
    """The logical lines (continuations joined) of a shell block, comments left out."""
    joined: list[str] = []
    current = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    for line in joined:
        words = line.split()
        if not words or line.lstrip().startswith("#"):
            continue
        yield line


def _simple_commands(line: str) -> Iterator[list[str]]:
    """The argv of each simple command of a shell line, env assignments and redirects dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    argv: list[str] = []
    skip = False
    for token in [*tokens, ";"]:
        if skip:
            skip = False
            continue
        if token in (">", ">>", "<", "2>"):
            skip = True
        elif token in (";", "&&", "||", "|", "&"):
            while argv and (argv[0] in ("do", "then") or re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0])):
                argv.pop(0)
            if argv and argv[0] not in ("for", "done", "if", "fi", "while", "export"):
                yield argv
            argv = []
        else:
            argv.append(token)


def _doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for lang, lines in _blocks(path):
            if lang not in SHELL_FENCES:
                continue  # output, diagrams, TOML, Python
            for line in _command_lines(lines):
                for argv in _simple_commands(line):
                    found.append((f"{_rel(path)}: {line.strip()[:80]}", argv))
    return found


COMMANDS = _doc_commands()


class _ParsedError(Exception):
    """Raised by the patched parse_args: the arguments parsed, nothing after it ran."""


def _parse_fedadamw(argv: list[str]) -> None:
    try:
        cli._build_parser().parse_args(argv)
    except SystemExit as err:
        raise AssertionError(f"fedadamw {' '.join(argv)}: argparse refused it") from err


def _parse_module(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    mod = importlib.import_module(module)
    main = getattr(mod, "main", None)
    assert callable(main), f"python -m {module}: no main() whose parser the docs' command can meet"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        original(self, *a, **k)
        raise _ParsedError

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        main(argv)
    except _ParsedError:
        return
    except SystemExit as err:
        raise AssertionError(f"python -m {module} {' '.join(argv)}: refused") from err
    raise AssertionError(f"python -m {module}: main() ran without parsing its arguments")


def _parse_flwr(argv: list[str]) -> None:
    import click
    import typer.main
    from flwr.cli.app import app

    command: click.Command = typer.main.get_command(app)
    ctx = command.make_context("flwr", list(argv))
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None, f"flwr {' '.join(argv)}: no such command"
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


def _make_targets() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", text, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", text, re.M))
    return targets, variables


def _parse_make(argv: list[str]) -> None:
    targets, variables = _make_targets()
    for arg in argv:
        if "=" in arg:
            assert arg.split("=")[0] in variables, f"make {arg}: no such Makefile variable"
        else:
            assert arg in targets, f"make {arg}: no such target (make help lists them)"


def test_the_docs_hold_commands_of_every_kind() -> None:
    programs = {Path(argv[0]).name for _, argv in COMMANDS}
    assert {"fedadamw", "make", "flwr", "python"} <= programs, programs


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(
    where: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    program, args = Path(argv[0]).name, argv[1:]
    if program == "fedadamw":
        _parse_fedadamw(args)
    elif program == "make":
        _parse_make(args)
    elif program == "flwr":
        try:
            _parse_flwr(args)
        except Exception as err:  # click's UsageError and friends
            raise AssertionError(f"{where}: Flower's CLI refuses it: {err}") from err
    elif program in ("python", "python3"):
        if args[:1] == ["-m"]:
            _parse_module(args[1], args[2:], monkeypatch)
        else:
            assert (ROOT / args[0]).is_file(), f"{where}: no script {args[0]}"
    elif "/" in argv[0] and not argv[0].startswith(".venv/"):
        assert (ROOT / argv[0]).is_file(), f"{where}: no file {argv[0]}"


def test_a_wrong_command_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: each refuses a command that does not exist."""
    with pytest.raises(AssertionError):
        _parse_module("fedadamw.docgen", ["--no-such-option"], monkeypatch)
    with pytest.raises(AssertionError):
        _parse_fedadamw(["run", "--no-such-option"])
    with pytest.raises(AssertionError):
        _parse_make(["no-such-target"])
    with pytest.raises(Exception, match="No such option"):
        _parse_flwr(["run", ".", "--no-such-option"])


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation out, spaces to hyphens."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path):
        match = re.match(r"^#{1,6} (.+)$", line)
        if match:
            slug = _slug(match.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_slug_matches_github() -> None:
    assert _slug("Engines: `flower` and `vmap`") == "engines-flower-and-vmap"
    assert _slug("Adam's state across rounds") == "adams-state-across-rounds"
    assert _slug("Results store (`DIR/results.db`)") == "results-store-dirresultsdb"


@pytest.mark.parametrize("path", DOCS, ids=[_rel(p) for p in DOCS])
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for line in _prose(path):
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{target} (no heading #{anchor} in {_rel(dest)})")
    assert not broken, f"{_rel(path)}: {broken}"


def _table_rows(path: Path) -> set[str]:
    """The body rows of every table outside code (a header row alone is not content)."""
    lines = [line.strip() for line in _prose(path)]
    rows = set()
    for i, line in enumerate(lines):
        if not line.startswith("|") or SEPARATOR.match(line):
            continue
        is_header = i + 1 < len(lines) and bool(SEPARATOR.match(lines[i + 1]))
        if not is_header:
            rows.add(line)
    return rows


def _is_command_output(path: Path) -> bool:
    """docs/findings/*.md besides its README: each is one `fedadamw compare` command's output."""
    return path.parent == ROOT / "docs" / "findings" and path.name != "README.md"


def test_no_table_row_stands_in_two_files() -> None:
    """One copy of every table: a row written twice drifts. Two outputs of `compare` on one
    store may share rows (the same point listed by two pairings); no hand-written file may
    repeat a row of any other file."""
    where: dict[str, Path] = {}
    twice = []
    for path in DOCS:
        for row in _table_rows(path):
            first = where.get(row)
            if first is not None and not (_is_command_output(first) and _is_command_output(path)):
                twice.append(f"{_rel(first)} and {_rel(path)}: {row[:70]}")
            where.setdefault(row, path)
    assert not twice, "\n".join(twice)


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; keep it <= 250, move the rest"
    first = next(_blocks(README))
    commands = [line.split("#")[0].strip() for line in first[1]]
    assert commands == ["make run", "make check"], commands
    # CI runs exactly the README's test command.
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))
    ]
    assert ci[-1] == commands[1], ci


def test_config_md_is_up_to_date(tmp_path: Path) -> None:
    text = docgen.render(docgen.config_keys())  # a key without a description raises, naming it
    assert docgen.CONFIG_MD.read_text() == text, "docs/config.md is stale: run `make docs`"
    assert docgen.main(["--check"]) == 0
    stale = tmp_path / "config.md"
    stale.write_text(text.replace("| `seed` |", "| `seeds` |"))
    assert docgen.main(["--check", "--out", str(stale)]) == 1
    assert docgen.main(["--out", str(stale)]) == 0 and stale.read_text() == text


def test_config_md_covers_every_key_with_the_codes_choices() -> None:
    keys = {k.name: k for k in docgen.config_keys()}
    assert set(keys) == {f.replace("_", "-") for f in Config.__dataclass_fields__}
    assert keys["dataset"].choices == tuple(REGISTRY)
    assert keys["experiment"].choices == ()
    assert all(k.description for k in keys.values())


def test_a_key_without_description_is_refused() -> None:
    text = "[tool.flwr.app.config]\nseed = 0  # the seed\nengine = 'flower'\n\n[tool.x]\n"
    with pytest.raises(ConfigError, match="no description for engine"):
        docgen.described_keys(text)
    text = "[tool.flwr.app.config]\nseed = 0\n    # the seed,\n    # continued\n"
    assert docgen.described_keys(text) == [("seed", "the seed, continued", docgen._FIRST_GROUP)]
