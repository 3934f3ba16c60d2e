"""The interactive live view, headless: the call book it reads, the ladder, saving
a call, and the app driven key by key with Textual's pilot."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import dpkt
import pytest
from rich.console import Console, RenderableType
from rich.text import Text
from textual.binding import Binding
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, Static

from otus_ebpf.capture.sampling import TaskSample
from otus_ebpf.control.commands import Commands
from otus_ebpf.control.server import ControlServer
from otus_ebpf.control.viewing import ViewVerbs
from otus_ebpf.logs import HeldLines
from otus_ebpf.view import save as save_module
from otus_ebpf.view.app import ROWS_FIRST, CallList, CallScreen, CallTable, Ladder, LiveApp, MessageView
from otus_ebpf.view.ladder import ladder_text
from otus_ebpf.view.save import save_json, save_pcap
from otus_ebpf.view.sources import RemoteSource
from tests.support.paths import REPO
from tests.support.records import numbered_sip_records
from tests.support.view import scripted_records
from userspace import callbook as book_module
from userspace.callbook import CallBook, CallDetail, CallRow, detail_json, detail_of
from userspace.records import CallSummary, Record, SipRecord, StreamReport

ANSWERED = ["INVITE", "INVITE (retransmission)", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"]


def fed(records: Sequence[Record] | None = None) -> CallBook:
    book = CallBook()
    book.take(records if records is not None else scripted_records())
    return book


def labels(detail: CallDetail) -> list[str]:
    return [m.label + (" (retransmission)" if m.retransmission else "") for m in detail.messages]


# -- the book ---------------------------------------------------------------------------


def test_book_follows_each_call_state_status_media_and_retransmission() -> None:
    rows = {r.call_id: r for r in fed().rows()}
    assert set(rows) == {"view-0@test", "view-1@test", "view-2@test", "view-3@test", "options-7@10.1.0.1"}
    assert [(r.state, r.status, r.messages) for r in (rows["view-1@test"], rows["view-3@test"])] == [
        ("ended", 200, 7), ("rejected", 486, 3)]
    assert (rows["options-7@10.1.0.1"].method, rows["options-7@10.1.0.1"].state) == ("OPTIONS", "done")
    one = rows["view-1@test"]
    assert one.lost == 5 and 0 < one.mos_ab < one.mos_ba, "the caller's stream lost 5: worse that way"
    assert rows["view-0@test"].mos_ab == rows["view-0@test"].mos_ba > 4
    assert (rows["view-1@test"].from_user, rows["view-1@test"].to_user) == ("alice1", "bob1")
    detail = fed().detail("view-1@test")
    assert detail is not None and labels(detail) == ANSWERED
    assert [s.lost for s in detail.streams] == [5, 0]
    invite = detail.messages[0].text
    assert invite.startswith("INVITE sip:bob1@") and "Call-ID: view-1@test" in invite


def test_filter_and_sort_rows() -> None:
    book = fed()
    assert [r.call_id for r in book.rows("BOB2")] == ["view-2@test"], "case-blind, any column"
    assert [r.call_id for r in book.rows("486")] == ["view-3@test"]
    assert [r.call_id for r in book.rows("nobody")] == []
    assert book.rows(sort="start")[0].call_id == "view-3@test", "newest first"
    assert book.rows(sort="lost")[0].call_id == "view-2@test"
    assert book.rows(sort="mos")[0].call_id == "view-2@test", "worst MOS first"
    assert [r.from_user for r in book.rows(sort="from")][:2] == ["alice0", "alice1"]
    assert len(book.rows(limit=2)) == 2


def test_book_is_bounded_in_calls_messages_and_bytes_and_counts_what_it_lets_go() -> None:
    book = CallBook(max_calls=100)
    book.take(numbered_sip_records(1_000, 1_000))
    assert len(book) == 100 and book.stats.calls_evicted == 900
    kept = {r.call_id for r in book.rows(limit=500)}
    assert kept == {f"call-{n}" for n in range(900, 1000)}, "oldest go first"
    one = CallBook()
    one.take(numbered_sip_records(book_module.MAX_MESSAGES + 10, 1))
    detail = one.detail("call-0")
    assert detail is not None and len(detail.messages) == book_module.MAX_MESSAGES and detail.not_kept == 10
    assert detail.row.messages == book_module.MAX_MESSAGES + 10
    small = CallBook(bytes_kept=10_000)
    small.take(numbered_sip_records(200, 200))
    assert 0 < len(small) < 200 and small.stats.calls_evicted == 200 - len(small)


def test_calls_idle_long_age_out_by_capture_time() -> None:
    records = numbered_sip_records(3, 3)
    late = numbered_sip_records(1, 1)[0]
    late = dataclasses.replace(late, ts_ns=records[0].ts_ns + book_module.IDLE_KEPT_NS + 10)
    late.message.call_id = "late"
    book = fed([*records, late])
    assert [r.call_id for r in book.rows()] == ["late"] and book.stats.calls_aged == 3


def test_a_huge_message_is_kept_cut_and_hostile_text_cannot_drive_the_terminal() -> None:
    (record,) = numbered_sip_records(1, 1)
    message = dataclasses.replace(record.message, call_id="evil\x1b[2J\x1b]0;pwn\x07",
                                  source=b"SIP/2.0 200 \x1b[31mOK\r\n" + b"X" * 100_000)
    message.size = len(message.source)
    book = fed([dataclasses.replace(record, message=message)])
    (row,) = book.rows()
    detail = book.detail(row.call_id)
    assert detail is not None and len(detail.messages[0].text) == book_module.TEXT_KEPT
    drawn = _plain(ladder_text(detail)) + _plain(Text(row.call_id))
    console = Console(width=200, record=True, force_terminal=True, color_system=None)
    console.print(ladder_text(detail))
    assert "\x1b" not in console.export_text(styles=False)
    assert "\x1b[2J" in drawn  # as the row's own text; only what is drawn is escaped


def _plain(text: Text) -> str:
    return text.plain


def test_detail_crosses_json_and_back_the_same() -> None:
    detail = fed().detail("view-2@test")
    assert detail is not None
    assert detail_of(json.loads(json.dumps(detail_json(detail)))) == detail
    with pytest.raises(ValueError):
        book_module.row_of(["only", "three", 3])


def test_saved_json_and_pcap_hold_the_call(tmp_path: Path) -> None:
    detail = fed().detail("view-1@test")
    assert detail is not None
    saved = json.loads(save_json(detail, tmp_path).read_text())
    assert [m["label"] for m in saved["messages"]] == [m.label for m in detail.messages]
    assert saved["call"]["call_id"] == "view-1@test" and len(saved["streams"]) == 2
    pcap = save_pcap(detail, tmp_path)
    with pcap.open("rb") as f:
        frames = [dpkt.ethernet.Ethernet(buf) for _ts, buf in dpkt.pcap.Reader(f)]
    payloads = [bytes(frame.data.data.data).decode() for frame in frames]
    assert payloads == [m.text for m in detail.messages]
    assert save_json(detail, tmp_path) != save_json(detail, tmp_path), "a second save keeps the first"


def test_a_call_id_from_the_wire_makes_a_safe_file_name(tmp_path: Path) -> None:
    detail = fed().detail("view-0@test")
    assert detail is not None
    hostile = detail._replace(row=detail.row._replace(call_id="../../etc/passwd\x00\n"))
    path = save_json(hostile, tmp_path)
    assert path.parent == tmp_path and "/" not in path.name[len("call-"):] and "\x00" not in path.name


# -- the app, driven by its keys ----------------------------------------------------------


class BookSource:
    """A CallSource over a book this test feeds (what RemoteSource reads from an agent)."""

    def __init__(self, book: CallBook) -> None:
        self.book = book
        self.asked = 0

    def dashboard(self) -> RenderableType:
        return Text("dashboard")

    def rows(self, query: str, sort: str, limit: int) -> list[CallRow]:
        self.asked += 1
        return self.book.rows(query, sort, limit)

    def detail(self, row: CallRow) -> CallDetail | None:
        return self.book.detail(row.call_id)

    def finished(self) -> bool:
        return False

    def log_lines(self) -> list[str]:
        return []


Steps = Callable[[LiveApp, Pilot[None]], Awaitable[None]]


def drive(source: BookSource, steps: Steps, tmp_path: Path) -> None:
    async def run() -> None:
        app = LiveApp(source, save_dir=tmp_path)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause()
            await steps(app, pilot)

    asyncio.run(run())


def table_ids(app: LiveApp) -> list[str]:
    """The Call-IDs the list shows on the screen, top to bottom (it draws what fits)."""
    table = app.screen.query_one("#calls", CallTable)
    shown = [line.split()[-1] for line in str(table.render()).splitlines()[1:]]
    assert len(shown) == min(len(table.rows), table.size.height - 1)
    return shown


def test_keys_list_filter_ladder_message_and_back(tmp_path: Path) -> None:
    source = BookSource(fed())

    async def steps(app: LiveApp, pilot: Pilot[None]) -> None:
        p = pilot
        assert isinstance(app.screen, CallList)
        assert len(table_ids(app)) == 5 and table_ids(app)[0] == "view-3@test"
        await p.press("slash")
        assert isinstance(app.focused, Input)
        await p.press(*"bob1")
        await p.pause()
        assert table_ids(app) == ["view-1@test"]
        await p.press("enter", "enter")  # leave the filter, open the call
        await p.pause()
        assert isinstance(app.screen, Ladder)
        ladder = app.screen.query_one("#ladder", OptionList)
        lines = [str(ladder.get_option_at_index(i).prompt) for i in range(ladder.option_count)]
        assert [line.split("\n")[0].replace("│", " ").strip() for line in lines] == ANSWERED
        assert "+1.065s" in lines[-1]
        assert "10.1.0.2:5060" in str(app.screen.query_one("#endpoints", Static).content)
        await p.press("down", "down", "enter")
        await p.pause()
        assert isinstance(app.screen, MessageView) and app.screen.message.label == "180 Ringing"
        assert "SIP/2.0 180 Ringing" in str(app.screen.query_one("#text", Static).content)
        await p.press("j")
        await p.press("escape")
        assert isinstance(app.screen, Ladder)
        await p.press("c", "escape")
        await p.pause()
        assert isinstance(app.screen, CallList) and table_ids(app) == ["view-1@test"]
        await p.press("slash", *["backspace"] * 4, "escape")
        await p.pause()
        assert len(table_ids(app)) == 5
        await p.press("s")
        await p.pause()
        assert isinstance(app.screen, CallList) and app.screen.sort == "duration"

    drive(source, steps, tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".pcap"]


def test_pause_holds_the_list_while_calls_come(tmp_path: Path) -> None:
    source = BookSource(fed(scripted_records(answered_calls=1, rejected_calls=0)))
    newer = numbered_sip_records(3, 3)

    async def steps(app: LiveApp, pilot: Pilot[None]) -> None:
        before = table_ids(app)
        await pilot.press("p")
        source.book.take(newer)
        assert isinstance(app.screen, CallList)
        app.screen.refresh_view()
        await pilot.pause()
        assert table_ids(app) == before and "PAUSED" in str(app.screen.query_one("#status", Static).content)
        await pilot.press("p")
        await pilot.pause()
        assert set(table_ids(app)) == {*before, "call-0", "call-1", "call-2"}

    drive(source, steps, tmp_path)


def test_a_call_that_is_gone_shows_waiting_and_the_view_keeps_going(tmp_path: Path) -> None:
    book = fed()
    source = BookSource(book)

    async def steps(app: LiveApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, Ladder)
        book._calls.clear()  # evicted while open
        app.screen.refresh_view()
        await pilot.press("escape")
        assert isinstance(app.screen, CallList)
        app.screen.refresh_view()
        await pilot.pause()
        assert table_ids(app) == []

    drive(source, steps, tmp_path)


def test_rows_a_refresh_asks_for_are_bounded_whatever_the_calls(tmp_path: Path) -> None:
    book = CallBook()
    book.take(numbered_sip_records(1_500, 1_500))
    source = BookSource(book)

    async def steps(app: LiveApp, pilot: Pilot[None]) -> None:
        table = app.screen.query_one("#calls", CallTable)
        assert len(table.rows) <= max(ROWS_FIRST, 2 * table.size.height) < 200, "a screenful or two at first"
        assert len(table_ids(app)) == table.size.height - 1
        for _ in range(20):
            await pilot.press("pagedown")
        await pilot.pause()
        assert len(table.rows) == 200, "more as the cursor goes down, at most 200"
        await pilot.press("end")
        assert table_ids(app)[-1] == table.rows[-1].call_id, "the list scrolls to its last row"

    drive(source, steps, tmp_path)


def test_book_take_ignores_records_it_does_not_show() -> None:
    records = scripted_records()
    sip_only = [r for r in records if isinstance(r, SipRecord)]
    with_all, only_sip = fed(records), fed(sip_only)
    assert [r.call_id for r in with_all.rows()] == [r.call_id for r in only_sip.rows()]


def test_the_readme_key_table_is_the_apps_bindings() -> None:
    readme = (REPO / "README.md").read_text().split("### The live view", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    bound = {key for screen in (CallList, CallScreen, CallTable)
             for binding in screen.BINDINGS if isinstance(binding, Binding) and binding.show is not False
             for key in binding.key.split(",")}
    names = {"slash": "/", "backspace": "escape"}
    assert {names.get(k, k) for k in bound} | {"enter"} == documented


# -- the verbs a view reads through (a daemon's socket, attach's private one) -------------------


class BookTask:
    name = "edge"

    def __init__(self, book: CallBook) -> None:
        self.book = book
        self.watched = False

    def metrics_sample(self) -> TaskSample:
        return TaskSample("running")

    def recent_rows(self) -> list[list[str]]:
        return []

    def watch_calls(self) -> None:
        self.watched = True

    def calls(self, query: str, sort: str, limit: int) -> list[CallRow]:
        return [row._replace(task=self.name) for row in self.book.rows(query, sort, limit)]

    def call_detail(self, call_id: str) -> CallDetail | None:
        return self.book.detail(call_id)


def test_view_verbs_answer_rows_and_a_call_and_refuse_bad_requests_in_one_line() -> None:
    task = BookTask(fed())
    held = HeldLines(keep=3)
    commands = Commands(ViewVerbs(lambda: [task], held.after, stopping=lambda: True).handlers())
    answer = commands.answer({"cmd": "calls", "query": "bob1", "sort": "lost", "limit": 10})
    assert task.watched and [row[0] for row in answer["calls"]] == ["view-1@test"]
    call = commands.answer({"cmd": "call", "task": "edge", "call_id": "view-1@test"})
    assert labels(detail_of(call["call"])) == ANSWERED
    assert commands.answer({"cmd": "call", "task": "edge", "call_id": "nobody"})["call"] is None
    assert commands.answer({"cmd": "samples"})["stopping"] is True
    for bad, said in (({"cmd": "calls", "sort": "size"}, '"sort" is one of'),
                      ({"cmd": "calls", "limit": 10**9}, '"limit" is a whole number'),
                      ({"cmd": "calls", "limit": True}, '"limit" is a whole number'),
                      ({"cmd": "calls", "query": "x" * 1000}, '"query" is a text'),
                      ({"cmd": "call", "task": "edge"}, '"call_id" names the call'),
                      ({"cmd": "call", "task": "other", "call_id": "x"}, "no task named"),
                      ({"cmd": "log", "after": -1}, '"after" is a line number')):
        refused = commands.answer(bad)
        assert refused["ok"] is False and said in refused["error"] and "\n" not in refused["error"], bad
    fleet = commands.answer({"cmd": "calls"}, origin="fleet")
    assert fleet["ok"] is False and "only over the control socket" in fleet["error"]
    for n in range(5):
        held.write(f"line {n}\npartial" if n == 4 else f"line {n}\n")
    assert commands.answer({"cmd": "log", "after": 0})["lines"] == ["line 2", "line 3", "line 4"], "last 3"
    assert commands.answer({"cmd": "log", "after": 4}) == {"ok": True, "last": 5, "lines": ["line 4"]}


# -- what the review found ----------------------------------------------------------------------


def _retyped(record: SipRecord, **fields: Any) -> SipRecord:
    return dataclasses.replace(record, message=dataclasses.replace(record.message, **fields))


def test_a_call_that_authenticates_goes_on_after_its_407_and_counts_its_live_duration() -> None:
    (template,) = numbered_sip_records(1, 1)
    t = template.ts_ns
    script = [("INVITE", None, 1, "INVITE"), (None, 407, 1, "INVITE"), ("ACK", None, 1, "ACK"),
              ("INVITE", None, 2, "INVITE"), (None, 180, 2, "INVITE"), (None, 200, 2, "INVITE")]
    book = CallBook()
    for n, (method, status, cseq, cseq_method) in enumerate(script):
        message = _retyped(template, method=method, status=status, cseq=cseq, cseq_method=cseq_method,
                           call_id="auth")
        book.take([dataclasses.replace(message, ts_ns=t + n * 10**9)])
    (row,) = book.rows()
    assert (row.state, row.status) == ("answered", 200)
    later = dataclasses.replace(numbered_sip_records(1, 1)[0], ts_ns=t + 65 * 10**9)
    later.message.call_id = "other"
    book.take([later])
    assert next(r for r in book.rows() if r.call_id == "auth").duration_s == 60.0, "still going: to now"


def test_huge_fields_from_the_wire_are_cut_in_rows_and_ladders() -> None:
    (record,) = numbered_sip_records(1, 1)
    huge = _retyped(record, call_id="c" * 60_000, method="INVITE", status=None, from_user="u" * 60_000,
                    to_user="\ufffd" * 60_000)
    reply = _retyped(record, call_id="c" * 60_000, method=None, status=499, reason="r" * 60_000)
    book = fed([huge, reply])
    (row,) = book.rows()
    assert max(len(row.call_id), len(row.from_user), len(row.to_user)) == book_module.FIELD_SHOWN
    detail = book.detail("c" * 60_000)
    assert detail is not None and max(len(m.label) for m in detail.messages) == book_module.FIELD_SHOWN


def test_the_byte_budget_counts_the_whole_datagram_a_short_message_came_in() -> None:
    (record,) = numbered_sip_records(1, 1)
    padded = _retyped(record, source=record.message.source + b"\0" * 60_000)
    book = CallBook(bytes_kept=1_000_000)
    book.take([dataclasses.replace(padded, message=dataclasses.replace(padded.message, call_id=f"c{n}"))
               for n in range(100)])
    assert len(book) <= 1_000_000 // 60_000, "each holds its 60 kB datagram"


def test_an_ended_call_or_a_ping_goes_before_a_call_in_progress() -> None:
    (record,) = numbered_sip_records(1, 1)
    book = CallBook(max_calls=3)
    invite = _retyped(record, method="INVITE", status=None, call_id="live")
    pings = [_retyped(record, method="OPTIONS", status=None, call_id=f"ping-{n}") for n in range(10)]
    book.take([invite, *pings])
    assert "live" in {r.call_id for r in book.rows()}, "ten pings did not push the call out"


def test_streams_a_call_shows_are_capped_and_keep_it_live() -> None:
    records = scripted_records(answered_calls=1, rejected_calls=0)
    book = fed([r for r in records if not isinstance(r, CallSummary)])
    report = next(r for r in records if isinstance(r, StreamReport))
    later = report.ts_ns + book_module.IDLE_KEPT_NS // 2
    for n in range(100):
        book.take([dataclasses.replace(report, ts_ns=later + n, report={**report.report, "ssrc": n})])
    detail = book.detail("view-0@test")
    assert detail is not None and len(detail.streams) == book_module.MAX_STREAMS
    after = later + book_module.IDLE_KEPT_NS // 2 + 10
    ping = dataclasses.replace(numbered_sip_records(1, 1)[0], ts_ns=after)
    book.take([ping])
    assert "view-0@test" in {r.call_id for r in book.rows()}, "its media kept it from ageing out"


def test_a_save_never_follows_a_link_nor_overwrites_and_is_private(tmp_path: Path) -> None:
    detail = fed().detail("view-1@test")
    assert detail is not None
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / f"{save_module.file_stem(detail)}.json").symlink_to(victim)
    path = save_json(detail, tmp_path)
    assert victim.read_text() == "keep me" and path.name.endswith("-1.json")
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_daemon_answering_nonsense_or_nothing_never_breaks_the_view(tmp_path: Path) -> None:
    def nonsense(_request: dict[str, object], _origin: str) -> dict[str, object]:
        return {"tasks": [{"name": 1}], "calls": [[1, 2]], "call": {"row": []}, "last": "x", "lines": 5}

    verbs = {v: nonsense for v in ("samples", "calls", "call", "log")}
    server = ControlServer(str(tmp_path / "odd.sock"), Commands(verbs).answer)
    try:
        for agent in (False, True):
            source = RemoteSource(str(server.path), agent=agent)
            assert "not answering" in str(source.dashboard())
            assert source.rows("", "start", 10) == [] and source.detail(fed().rows()[0]) is None
            assert source.finished() is False, "a wrong answer is not the agent gone"
    finally:
        server.close()
    gone = RemoteSource(str(tmp_path / "odd.sock"), agent=True)
    assert gone.finished() is True and "not answering" in str(gone.dashboard())
