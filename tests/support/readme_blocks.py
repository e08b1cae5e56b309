"""README.md's fenced code blocks, their test markers, and the commands in them.

A block that shows commands carries a marker on the last non-blank line before its fence, saying how
``test_readme.py`` exercises it::

    <!-- test: run -->       each command runs for real (cheap ones: --help, ddrnet data digits)
    <!-- test: parse -->     each command is parsed by the real parser of its program (ddrnet's
                             argparse parsers, msrun's, the Makefile's targets, the Dockerfile's
                             ARGs, ...) and the repository files it names must exist
    <!-- test: server -->    runs for real against a live `ddrnet serve` (bash or python)
    <!-- test: settings-yaml -->  a YAML settings file that must validate as ServerSettings
    <!-- test: quickstart-output -->  the text `ddrnet quickstart` prints when ready (compared with
                             cli.quickstart's own output; test_quickstart.py runs its try lines)

Other blocks (text, json, yaml) show output or file contents; a line in them that starts like a
command (``ddrnet ``, ``curl ``, ``python ``, ...) fails the suite.

The first block of the README is its opening (install + quickstart, install + tests) and is checked
on its own (``test_opening_commands``; ``test_quickstart.py`` runs its ``ddrnet quickstart``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

MARKER = re.compile(r"^<!--\s*test:\s*([\w-]+)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
COMMAND_LANGS = {"bash", "sh", "shell", "console", "python", "py"}
MODES_BY_LANG = {
    "bash": {"run", "parse", "server"},
    "python": {"server"},
    "yaml": {"settings-yaml"},
    "text": {"quickstart-output"},
}
COMMAND_WORDS = ("ddrnet ", "curl ", "python ", "python3", "pip ", ".venv/", "msrun ", "scripts/", "make ",
                 "docker ", "kubectl ", "$ ")


@dataclass(frozen=True)
class Block:
    lang: str
    mode: str | None  # the marker's mode, None when unmarked
    text: str
    line: int  # 1-based line of the opening fence

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, in order. ValueError for an unclosed fence."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"README.md:{start + 1}: code block is never closed")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k].strip()) if k >= 0 else None
        out.append(Block(fence.group(1).lower(), marker.group(1) if marker else None,
                         "\n".join(lines[start + 1 : j]), start + 1))
        i = j + 1
    return out


def dangling_markers(text: str | None = None) -> list[int]:
    """Lines of markers that are not directly followed (blank lines aside) by a code fence."""
    lines = (README.read_text() if text is None else text).splitlines()
    bad = []
    for n, line in enumerate(lines):
        if MARKER.match(line.strip()):
            k = n + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k == len(lines) or not FENCE.match(lines[k]):
                bad.append(n + 1)
    return bad


def commands(block: Block) -> list[str]:
    """The shell commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((pending + line).strip())
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


def marked(mode: str) -> list[Block]:
    return [b for b in blocks()[1:] if b.mode == mode]
