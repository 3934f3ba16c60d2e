"""docs/CONFIG.md's tables of settings, written from SETTINGS: the text
between BEGIN and END in that file is exactly ``markdown()`` (a test holds
it so). ``python -m otus_ebpf.control.reference --markdown`` prints it;
``--update FILE`` rewrites it in place."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from otus_ebpf.control.settings import SETTINGS, Group, Scope, Setting

BEGIN = ("<!-- settings: written by `python -m otus_ebpf.control.reference --update docs/CONFIG.md` "
         "from otus_ebpf/control/settings.py; edit there, not here -->")
END = "<!-- end of settings -->"


def markdown() -> str:
    parts = ["## Top level", "",
             _table(("key", "flag", "variable", "values", "default", "meaning"),
                    [[*_cells(s)[:2], f"`{s.env}`" if s.env else "—", *_cells(s)[2:]]
                     for s in SETTINGS if s.scope is Scope.FILE]),
             "",
             "`defaults` (task keys) is merged under every task, section by section (a task's "
             "`filter.signature` leaves the defaults' `filter.sip_ports` in place); `tasks` is the list of "
             "tasks.",
             "", "## A task", ""]
    for group in Group:
        rows = [_cells(s) for s in SETTINGS if s.scope is Scope.TASK and s.group is group]
        if rows:
            header = ("key", "flag", "values", "default", "meaning")
            parts += [f"### {group.value}", "", _table(header, rows), ""]
    return "\n".join(parts).rstrip("\n") + "\n"


def _cells(setting: Setting) -> list[str]:
    flag = "—" if setting.flag is None else f"`{setting.flag}`"
    if setting.flag is not None and setting.repeatable:
        flag += ", repeatable"
    values = setting.kind.describe()
    meaning = f"{setting.help} (required when its section is given)" if setting.required else setting.help
    return [f"`{setting.key}`", flag, f"list of {values}" if setting.repeatable else values,
            setting.describe_default(), meaning]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def generated_part(text: str) -> str | None:
    """What lies between BEGIN and END in ``text`` (None if they are not both there)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(BEGIN):end].strip("\n") + "\n"


def update(path: Path) -> bool:
    """Rewrite the generated part of ``path``; True if it changed."""
    text = path.read_text()
    if generated_part(text) is None:
        raise SystemExit(f"{path}: no {BEGIN!r} ... {END!r} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{BEGIN}\n\n{markdown()}\n{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    if len(args) == 2 and args[0] == "--update":
        print(f"{args[1]}: {'rewritten' if update(Path(args[1])) else 'already current'}")
        return 0
    print("usage: python -m otus_ebpf.control.reference --markdown | --update docs/CONFIG.md",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
