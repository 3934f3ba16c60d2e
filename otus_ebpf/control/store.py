"""Tasks made while the daemon runs (over its control socket or a Kafka
command) kept across a restart: one JSON file a task under the state
directory, read back when the daemon starts.

Three things shape it. The daemon can be killed at any instant, so an entry
is written beside its final name and renamed over it: a restart finds the old
entry or the new one, never part of either. A task name is anyone's text
("/", "..", NUL, 10,000 characters), so the file is named by a hash of it and
the name inside is checked against the file name when read. And one bad entry
(a disk error, an operator's edit, a file copied in) must not keep the daemon
from restoring the others: load() names it in one line and skips it.

Entries name secret files, so the directories the store makes are its
owner's alone (0700) and the entries 0600."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from otus_ebpf.errors import SetupError

# A stored task is a config file's task: a few kilobytes. A MiB is far past any
# real one and still bounds what a start reads (at most 1,000 of them).
MAX_ENTRY_BYTES = 1 << 20
# Each stored task may be a running capture; past a thousand, something is
# creating tasks in a loop and refusing is kinder than starting them all.
MAX_STORED_TASKS = 1_000
# The layout of an entry. A new layout gets a new number, which this code
# refuses (names the file, skips it) rather than guessing at.
FORMAT = 1
# What _write_atomic names its temp files: all that load() removes unasked.
_TEMP = re.compile(r"\.[0-9a-f]{16}\.tmp")
_PRIVATE = 0o700
_SHOWN_CHARS = 60
# Each field of an entry, the type json.loads gives it, and that type in words.
_FIELDS: dict[str, tuple[type, str]] = {
    "name": (str, "a non-empty string"),
    "definition": (dict, "an object"),
    "origin": (str, "a string"),
    "paused": (bool, "true or false"),
    "saved_ms": (int, "an integer"),
}


@dataclass(frozen=True, slots=True)
class StoredTask:
    """One task as stored: what the daemon needs to start it again, who made it and when."""

    name: str
    definition: dict[str, Any]  # the task's keys as in a config file's task (plain JSON data)
    origin: str                 # who made it, e.g. "socket" or "kafka 5f1c…" (the request id)
    paused: bool
    saved_ms: int               # wall clock, ms since the epoch


class TaskStore:
    """The entries under ``directory/tasks``. One lock for everything: the
    socket's thread and the Kafka consumer's may save and remove at once, and
    load() must not sweep away a temp file that a save is about to rename."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tasks = directory / "tasks"
        self._conflicts = directory / "conflicts"
        self._lock = threading.Lock()
        # The state directory is the operator's (systemd's StateDirectory= makes
        # it 0755 and would undo a chmod): only what the store makes is tightened.
        _make_directory(directory, tighten=False)
        _make_directory(self._tasks, tighten=True)

    def save(self, name: str, definition: Mapping[str, Any], origin: str, paused: bool = False) -> None:
        """Store task ``name`` in place of what was stored under that name, so a
        restart brings it back. SetupError says why not; the old entry then stays
        as it was, unless only the last step, syncing the directory, failed."""
        file = _file_name(name) if name else None
        if file is None:
            raise SetupError(f"task name {_shown(name)} cannot be stored: it must be non-empty Unicode text")
        data = _encode(name, definition, origin, paused)
        path = self._tasks / file
        with self._lock:
            if not os.path.lexists(path) and self._count() >= MAX_STORED_TASKS:
                raise SetupError(f"task {_shown(name)} not stored: {MAX_STORED_TASKS} tasks are stored "
                                 f"already, the most {self._tasks} keeps")
            try:
                _write_atomic(path, data, replace=True)
            except OSError as exc:
                raise SetupError(f"cannot store task {_shown(name)} as {path}: {exc.strerror}") from None

    def remove(self, name: str) -> bool:
        """Forget task ``name``; True if it was stored."""
        file = _file_name(name)
        if file is None:
            return False  # such a name is never stored
        path = self._tasks / file
        with self._lock:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise SetupError(f"cannot remove task {_shown(name)} ({path}): {exc.strerror}") from None
            try:
                _sync_directory(self._tasks)  # or a power cut brings the task back
            except OSError as exc:
                raise SetupError(f"task store {self._tasks}: {exc.strerror}") from None
        return True

    def load(self) -> tuple[list[StoredTask], list[str]]:
        """Every good entry, sorted by task name, and one line per problem, each
        naming its file. A bad entry is skipped, never raised; temp files a
        killed writer left are removed. SetupError only if the directory
        itself cannot be listed."""
        with self._lock:
            entries, problems = self._entries()
            tasks = []
            for entry in entries:
                path = self._tasks / entry
                try:
                    tasks.append(_decode(path, _read_entry(path)))
                except _Bad as bad:
                    problems.append(f"{_shown_path(path)}: {bad}")
        return sorted(tasks, key=lambda task: task.name), problems

    def set_aside(self, name: str, why: str) -> Path | None:
        """Move task ``name``'s entry to ``conflicts/`` with ``"set_aside": why`` in it,
        for an operator to look at: no longer loaded, nothing lost. The copy is
        written before the entry goes, so a kill between leaves both, never
        neither. The new path, or None when no task ``name`` is stored."""
        file = _file_name(name)
        if file is None:
            return None
        path = self._tasks / file
        with self._lock:
            try:
                data = _read_entry(path)
            except _Bad as bad:
                if not os.path.lexists(path):
                    return None
                raise SetupError(f"cannot set aside task {_shown(name)}: {path}: {bad}") from None
            _make_directory(self._conflicts, tighten=True)
            target = self._conflict_path(path)
            try:
                _write_atomic(target, _with_reason(data, why), replace=False)
                os.unlink(path)
                _sync_directory(self._tasks)
            except OSError as exc:
                raise SetupError(f"cannot set aside task {_shown(name)} as {target}: "
                                 f"{exc.strerror}") from None
        return target

    def _entries(self) -> tuple[list[str], list[str]]:
        """The file names load() reads, and a problem line for each other file
        there but a writer's leftover, which is removed."""
        names = self._listing(self._tasks)
        problems = _remove_leftovers(self._tasks, names)
        if self._conflicts.is_dir():  # a set_aside killed mid-way leaves its temp file there
            try:
                problems += _remove_leftovers(self._conflicts, self._listing(self._conflicts))
            except SetupError as exc:
                problems.append(str(exc))
        problems += [f"{_shown_path(self._tasks / n)}: not a task entry, left alone"
                     for n in names if not n.endswith(".json") and not _TEMP.fullmatch(n)]
        entries = [n for n in names if n.endswith(".json")]
        if len(entries) > MAX_STORED_TASKS:
            # By file name: arbitrary, but the same at every start, and nothing
            # past the limit is read.
            problems.append(f"{self._tasks}: {len(entries) - MAX_STORED_TASKS} entries not read, "
                            f"{_shown_path(Path(entries[MAX_STORED_TASKS]))} and after: more than "
                            f"the {MAX_STORED_TASKS} a store keeps")
        return entries[:MAX_STORED_TASKS], problems

    def _conflict_path(self, entry: Path) -> Path:
        """``conflicts/<entry>-<UTC time>.json``, with -1, -2… if one is there already
        (the same task set aside twice in a second, or a clock stepped back)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self._conflicts / f"{entry.stem}-{stamp}.json"
        count = 0
        while os.path.lexists(target):
            count += 1
            target = self._conflicts / f"{entry.stem}-{stamp}-{count}.json"
        return target

    def _count(self) -> int:
        return sum(1 for name in self._listing(self._tasks) if name.endswith(".json"))

    @staticmethod
    def _listing(directory: Path) -> list[str]:
        try:
            return sorted(os.listdir(directory))
        except OSError as exc:
            raise SetupError(f"task store {directory}: {exc.strerror}") from None


class _Bad(Exception):
    """An entry load() skips; the message says why, after the file's path."""


def _file_name(name: str) -> str | None:
    """The entry's file name, a hash of the task name so that any text is a safe
    file name; None for a name that is not Unicode text (a lone surrogate)."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return hashlib.sha256(encoded).hexdigest()[:32] + ".json"


def _encode(name: str, definition: Mapping[str, Any], origin: str, paused: bool) -> bytes:
    """The entry's bytes. Refused unless it would load back equal to what was
    given: a date, NaN, a tuple or an integer key would come back as something
    else, or not at all."""
    entry = {"format": FORMAT, "name": name, "definition": dict(definition), "origin": origin,
             "paused": paused, "saved_ms": time.time_ns() // 1_000_000}
    try:
        text = _dumps(entry)
        data = text.encode("utf-8")
        same = json.loads(text) == entry
    except (TypeError, ValueError, RecursionError) as exc:
        raise SetupError(f"task {_shown(name)} not stored: its definition is not plain JSON data "
                         f"({_one_line(str(exc))})") from None
    if not same:
        raise SetupError(f"task {_shown(name)} not stored: its definition is not plain JSON data "
                         "(it would not load back as it is)")
    if len(data) > MAX_ENTRY_BYTES:
        raise SetupError(f"task {_shown(name)} not stored: its entry would take {len(data)} bytes, "
                         f"more than the {MAX_ENTRY_BYTES} a stored task may")
    return data


def _dumps(content: dict[str, Any]) -> str:
    """An entry as an operator reads it: keys sorted, one a line, text as it is."""
    return json.dumps(content, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False)


def _write_atomic(path: Path, data: bytes, replace: bool) -> None:
    """``data`` as file ``path``, all or nothing even if the process is killed:
    written to a temp file beside it (load() removes one a killed writer left),
    synced, renamed over ``path`` (or with replace=False linked to it, which
    raises FileExistsError rather than overwrite), and the directory synced so
    the new name survives a power cut too. OSError otherwise, the temp file gone."""
    temp = path.with_name(f".{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _sync_directory(path.parent)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(path: Path, tighten: bool) -> None:
    """``path`` made (its parents too) 0700 if missing; with ``tighten``, set to
    0700 if it is anything else. SetupError naming it otherwise."""
    try:
        path.mkdir(mode=_PRIVATE, parents=True, exist_ok=True)
        if tighten and stat.S_IMODE(path.stat().st_mode) != _PRIVATE:
            path.chmod(_PRIVATE)
    except FileExistsError:
        raise SetupError(f"task store {path}: not a directory") from None
    except OSError as exc:
        raise SetupError(f"task store {path}: {exc.strerror}") from None


def _remove_leftovers(directory: Path, names: list[str]) -> list[str]:
    """Remove the temp files a killed writer left; a problem line for one that stays."""
    problems = []
    for name in names:
        if _TEMP.fullmatch(name):
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"{directory / name}: a writer's leftover, not removed: {exc.strerror}")
    return problems


def _read_entry(path: Path) -> bytes:
    """The entry's bytes: a regular file, not a link to one (an entry is only ever
    written here, by rename), of at most MAX_ENTRY_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Bad("a symbolic link, not a regular file: not followed") from None
        raise _Bad(f"cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Bad("not a regular file")
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(MAX_ENTRY_BYTES + 1)
    except OSError as exc:
        raise _Bad(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_ENTRY_BYTES:
        raise _Bad(f"larger than {MAX_ENTRY_BYTES} bytes, the most a stored task takes")
    return data


def _decode(path: Path, data: bytes) -> StoredTask:
    """The task in an entry's bytes; _Bad saying what is wrong with them."""
    try:
        content = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Bad("not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"not JSON ({_one_line(str(exc))})") from None
    if not isinstance(content, dict):
        raise _Bad(f"not a JSON object but {type(content).__name__}")
    if type(content.get("format")) is not int or content["format"] != FORMAT:
        raise _Bad(f"format {_shown(content.get('format'))}, not {FORMAT}: not read")
    wrong = [f"{key} ({kind})" for key, (kind_type, kind) in _FIELDS.items()
             if type(content.get(key)) is not kind_type]
    if wrong or not content["name"]:
        raise _Bad("fields missing or not as written: " + ", ".join(wrong or ["name (a non-empty string)"]))
    expected = _file_name(content["name"])
    if expected != path.name:
        raise _Bad(f"holds task {_shown(content['name'])}, whose entry is "
                   f"{expected or 'none (not Unicode text)'}: moved or copied here, not loaded")
    return StoredTask(content["name"], content["definition"], content["origin"], content["paused"],
                      content["saved_ms"])


def _with_reason(data: bytes, why: str) -> bytes:
    """The entry with ``"set_aside": why`` added; as it was if that cannot be done
    (not a JSON object): a damaged entry is moved all the same."""
    try:
        content = json.loads(data.decode("utf-8"))
        if not isinstance(content, dict):
            return data
        content["set_aside"] = why
        return json.dumps(content, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        return data


def _shown(value: object) -> str:
    """A name (or any value) as a log line shows it: quoted, escaped onto one line, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def _shown_path(path: Path) -> str:
    """A path from the directory's listing on one printable line (a file name may hold a newline)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())
