"""The flags of `attach`, `replay` and `daemon`, made from the settings
(otus_ebpf.control.settings): each flag's type is its setting's parser, so a
bad value is a usage error in the same words the config checker uses. No
flag has a default of its own (argparse.SUPPRESS): the namespace holds only
what the operator gave, which is how flags are laid over a config file."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from otus_ebpf.control.kinds import Switch
from otus_ebpf.control.settings import SETTINGS, Group, Scope, Setting


def add_settings(parser: argparse.ArgumentParser, command: str,
                 help_overrides: Mapping[str, str] | None = None) -> dict[Group, Any]:
    """The flags ``command`` takes, in a help section per group; returns the sections."""
    sections: dict[Group, Any] = {}
    for group in Group:
        for setting in SETTINGS:
            if setting.group is group and command in setting.takes:
                if group not in sections:
                    sections[group] = parser.add_argument_group(group.value)
                override = (help_overrides or {}).get(setting.name)
                _add_flag(sections[group], setting, override or _help(setting))
    return sections


def given(args: argparse.Namespace, command: str, scope: Scope = Scope.TASK) -> dict[str, Any]:
    """The values of ``command``'s flags of ``scope`` that the operator gave."""
    chosen = [s for s in SETTINGS if s.scope is scope and command in s.takes and hasattr(args, s.name)]
    return {s.name: tuple(getattr(args, s.name)) if s.repeatable else getattr(args, s.name) for s in chosen}


def _add_flag(group: Any, setting: Setting, text: str) -> None:
    assert setting.flag is not None
    if isinstance(setting.kind, Switch):
        group.add_argument(setting.flag, dest=setting.name, action="store_true", default=argparse.SUPPRESS,
                           help=text)
        return
    group.add_argument(setting.flag, dest=setting.name, type=argument_type(setting.kind.parse),
                       action="append" if setting.repeatable else "store", default=argparse.SUPPRESS,
                       metavar=setting.kind.metavar, help=text)


def _help(setting: Setting) -> str:
    notes = ["repeatable"] if setting.repeatable else []
    default = setting.describe_default().replace("`", "")
    if not isinstance(setting.kind, Switch) and default not in ("—", "[]"):
        notes.append(f"default: {default}")
    text = f"{setting.help} ({'; '.join(notes)})" if notes else setting.help
    return text.replace("%", "%%")


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A setting's parser as argparse's ``type``: its ValueError as argparse's one-line error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert
