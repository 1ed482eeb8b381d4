"""The daemon's status page at ``/``: the renderer, the endpoint's routes, and the page in Chromium.

The page is read here as a person reads it: :class:`PageView` parses the
HTML (the renderer's output, or the DOM Chromium dumps) into the summary
line and each account's cells by column name.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import PASSWORD, DaemonProcess, account, free_port, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from dovecot import DovecotMailbox, DovecotServer, unavailable
from popvault import config as config_module
from popvault.daemon.core import ArchiveDaemon
from popvault.daemon.metrics import Metrics, MetricsServer
from popvault.daemon.statuspage import (
    STATE_LABELS,
    PageData,
    account_state,
    relative,
    render_page,
    summary_line,
)
from popvault.errors import LedgerError
from popvault.ledger import Ledger
from popvault.redaction import MASK, redact, register
from popvault.status import StatusRow
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, dovecot_account

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NEVER_RUN = StatusRow("acct", True, 0, 0, None, None, None, None, None, None, 0, None, 0)


class PageView(HTMLParser):
    """The page as read: its markup events, the summary line, each account's cells by column."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        # Every tag, comment and declaration with its attributes: the page's structure.
        self.events: list[tuple[str, str, tuple[tuple[str, str | None], ...]]] = []
        self.summary = ""
        self.rows: list[dict[str, str]] = []
        self.row_kinds: list[str] = []
        self.text = ""
        self._in_summary = False
        self._in_body = False
        self._cell: str | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(attrs)))
        found = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append({})
            self.row_kinds.append(found.get("class") or "")
        elif tag == "td" and self._in_body:
            self._cell = found.get("data-label") or "?"
            self.rows[-1][self._cell] = ""
        elif tag == "p" and found.get("class") == "summary":
            self._in_summary = True

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag, ()))
        if tag == "td":
            self._cell = None
        elif tag == "p":
            self._in_summary = False
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._cell is not None:
            self.rows[-1][self._cell] += data
        if self._in_summary:
            self.summary += data

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", data, ()))

    def handle_decl(self, decl: str) -> None:
        self.events.append(("decl", decl, ()))

    def handle_pi(self, data: str) -> None:
        self.events.append(("pi", data, ()))

    def row(self, name: str) -> dict[str, str]:
        """The cells of the account called ``name`` (its Account cell starts with it)."""
        (found,) = [row for row in self.rows if row["Account"].split(" not in config")[0] == name]
        return found


def view(*rows: StatusRow, running_here: frozenset[str] = frozenset()) -> PageView:
    page = PageData(rows, NOW, served_by="testhost pid 42", running_here=running_here)
    return PageView(render_page(page).decode("utf-8"))


def ran(row: StatusRow, outcome: str, **changes: Any) -> StatusRow:
    """``row`` after a run with ``outcome`` that started a minute ago."""
    last_success = NOW - timedelta(minutes=1) if outcome == "ok" else None
    return replace(
        row,
        last_run_at=NOW - timedelta(minutes=1),
        last_outcome=outcome,
        last_success_at=last_success,
        **changes,
    )


# -- states -----------------------------------------------------------------

# Each state with a row in it, the badge's label and what its detail says.
STATES = [
    ("ok", ran(NEVER_RUN, "ok", consecutive_failures=0), "ok", None),
    (
        "failing",
        ran(NEVER_RUN, "failed", consecutive_failures=3, last_error="login refused"),
        "failing",
        "3 failed run(s) in a row",
    ),
    ("failed once", ran(NEVER_RUN, "failed", last_error="timed out"), "failing", None),
    ("partial", ran(NEVER_RUN, "partial", failed_messages=2), "partial", "some messages failed"),
    ("interrupted", ran(NEVER_RUN, "interrupted"), "interrupted", "stopped before it ended"),
    ("never run", NEVER_RUN, "never run", None),
    (
        "running by a lease holder",
        replace(
            ran(NEVER_RUN, "ok"),
            running_by="mx2 pid 7 (daemon 0123abcd)",
            running_since=NOW - timedelta(seconds=30),
        ),
        "running now",
        "by mx2 pid 7 (daemon 0123abcd) since 2026-12-04 11:59:30 UTC",
    ),
    ("running by a popvault run", ran(NEVER_RUN, "running"), "running now", "another popvault"),
]


@pytest.mark.parametrize(
    ("row", "label", "detail"), [s[1:] for s in STATES], ids=[s[0] for s in STATES]
)
def test_each_state_has_its_badge_and_says_why(
    row: StatusRow, label: str, detail: str | None
) -> None:
    page = view(row)
    shown = page.row("acct")["State"]
    assert shown.startswith(label)
    if detail is None:
        assert shown == label
    else:
        assert detail in shown
    (kind,) = page.row_kinds
    assert STATE_LABELS[kind] == label  # the badge's colour class matches its words


def test_a_run_of_this_daemon_is_running_now_whatever_the_last_run_did() -> None:
    failing = ran(NEVER_RUN, "failed", consecutive_failures=2, last_error="-ERR [SYS/TEMP] busy")
    page = view(failing, running_here=frozenset({"acct"}))
    cells = page.row("acct")
    assert cells["State"] == "running now by this daemon (testhost pid 42)"
    assert cells["Last error"] == "-ERR [SYS/TEMP] busy"  # the previous run's error stays shown


def test_every_column_shows_the_rows_numbers_and_times() -> None:
    row = replace(
        ran(NEVER_RUN, "failed", consecutive_failures=1, last_error="refused"),
        last_success_at=NOW - timedelta(days=2),
        next_run_at=NOW + timedelta(minutes=30),
        archived_messages=12345,
        archived_bytes=3 * 1024 * 1024,
        failed_messages=4,
        held_messages=2,
    )
    cells = view(row).row("acct")
    assert cells == {
        "Account": "acct",
        "State": "failing 1 failed run(s) in a row",
        "Last success": "2026-12-02 12:00:00 UTC 2 d ago",
        "Next run": "2026-12-04 12:30:00 UTC in 30 min",
        "Archived": "12,345 3.0 MiB",
        "Failing messages": "4",
        "Held": "2",
        "Last error": "refused",
    }


def test_messages_archived_elsewhere_are_counted_apart() -> None:
    row = replace(ran(NEVER_RUN, "ok"), archived_messages=3, imported_messages=1200)
    assert view(row).row("acct")["Archived"] == "3 0 B +1,200 imported"
    assert "imported" not in view(replace(row, imported_messages=0)).row("acct")["Archived"]


def test_an_account_only_the_ledger_knows_is_marked_and_absent_values_say_so() -> None:
    gone = replace(NEVER_RUN, name="old", configured=False)
    cells = view(gone).row("old")
    assert cells["Account"] == "old not in config"
    assert cells["Last success"] == "never"
    assert cells["Next run"] == "not planned"
    assert cells["Last error"] == "-"


def test_no_accounts_says_so() -> None:
    page = view()
    assert page.rows == []
    assert page.summary == "0 accounts: 0 ok, 0 failing"
    assert "No accounts configured" in page.text


# Row makers by the state they make, for the summary's property.
MAKERS: dict[str, Callable[[StatusRow], StatusRow]] = {
    "ok": lambda row: ran(row, "ok"),
    "failing": lambda row: ran(row, "ok", consecutive_failures=1),  # the daemon's count decides
    "partial": lambda row: ran(row, "partial"),
    "interrupted": lambda row: ran(row, "interrupted"),
    "running": lambda row: ran(row, "running"),
    "never": lambda row: row,
}


@settings(max_examples=50)
@given(st.lists(st.sampled_from(sorted(MAKERS)), max_size=30))
def test_the_summary_counts_every_account_once_by_its_state(kinds: list[str]) -> None:
    rows = [MAKERS[kind](replace(NEVER_RUN, name=f"a{i}")) for i, kind in enumerate(kinds)]
    page = PageData(rows, NOW, served_by="h pid 1")
    line = summary_line([account_state(row, page) for row in rows])
    head, _, tail = line.partition(": ")
    assert head == f"{len(kinds)} account{'' if len(kinds) == 1 else 's'}"
    counted = {label: int(number) for number, label in (p.split(" ", 1) for p in tail.split(", "))}
    expected = {STATE_LABELS[kind]: kinds.count(kind) for kind in STATE_LABELS}
    # ok and failing always said, the others when there are some.
    assert counted == {label: n for label, n in expected.items() if n or label in ("ok", "failing")}
    assert PageView(render_page(page).decode()).summary == line


# -- hostile text -------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</td></tr></table><h1>owned</h1>",
    "<!-- a comment --> &amp; &lt; ' \"",
    "\x1b[2J\x1b]0;retitled\x07\x00\r\nforged log line\x85\x9b",
]


# Any control character but the newlines between the page's own lines.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_names_and_errors_are_text_not_markup(text: str) -> None:
    row = ran(replace(NEVER_RUN, name=text, configured=False), "failed", last_error=text)
    body = render_page(PageData([row], NOW, served_by="h pid 1")).decode("utf-8")
    page = PageView(body)
    cells = page.row(redact(text))
    assert cells["Last error"] == redact(text)
    plain = replace(row, name="x", last_error="x")
    baseline = PageView(render_page(PageData([plain], NOW, served_by="h pid 1")).decode())
    assert page.events == baseline.events  # no tag, attribute or comment more or less
    # Control characters are shown as \x1b and the like, never sent as they are.
    assert CONTROL.search(body) is None
    assert "\x1b" not in text or "\\x1b" in cells["Last error"]


def test_a_registered_secret_in_server_text_is_masked() -> None:
    secret = register("pw-Hidden-4711")
    row = ran(NEVER_RUN, "failed", last_error=f"-ERR bad password {secret} for bob")
    body = render_page(PageData([row], NOW, served_by="h pid 1"))
    assert secret.encode() not in body
    assert PageView(body.decode()).row("acct")["Last error"] == f"-ERR bad password {MASK} for bob"


@settings(max_examples=300)
@given(name=st.text(min_size=1, max_size=40), error=st.text(min_size=1, max_size=200))
def test_no_text_ever_adds_markup_or_control_characters(name: str, error: str) -> None:
    """Whatever an account is called and whatever a server says: the same tags, the text as text."""
    body = render_page(
        PageData([ran(replace(NEVER_RUN, name=name), "failed", last_error=error)], NOW, "h pid 1")
    ).decode("utf-8")
    baseline = render_page(
        PageData([ran(replace(NEVER_RUN, name="x"), "failed", last_error="x")], NOW, "h pid 1")
    ).decode("utf-8")
    page = PageView(body)
    assert page.events == PageView(baseline).events
    (cells,) = page.rows
    assert cells["Last error"] == redact(error)
    assert cells["Account"] == redact(name)
    assert CONTROL.search(body) is None


@settings(max_examples=200)
@given(st.integers(min_value=-10 * 86400 * 365, max_value=10 * 86400 * 365))
def test_relative_times_say_the_direction_and_the_largest_whole_unit(seconds: int) -> None:
    said = relative(NOW + timedelta(seconds=seconds), NOW)
    if seconds == 0:
        assert said == "now"
        return
    assert said.startswith("in ") if seconds > 0 else said.endswith(" ago")
    number, unit = said.removeprefix("in ").removesuffix(" ago").split(" ")
    size = {"s": 1, "min": 60, "h": 3600, "d": 86400}[unit]
    assert int(number) == abs(seconds) // size >= 1
    assert unit == "d" or abs(seconds) < {"s": 60, "min": 3600, "h": 86400}[unit]


# -- the endpoint ---------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Endpoint:
    """A MetricsServer on a free port, with the status page given; stopped at the end."""

    def __init__(self, metrics: Metrics, status_page: Any = None) -> None:
        self.server = MetricsServer(metrics, "127.0.0.1", 0, lambda: True, status_page=status_page)

    def __enter__(self) -> int:
        self.server.start()
        return self.server.port

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()


def test_the_routes_page_metrics_health_and_404() -> None:
    metrics = Metrics()
    metrics.grow_archive("acct", 3, 300)
    page = PageData([ran(NEVER_RUN, "ok")], NOW, served_by="h pid 1")
    with Endpoint(metrics, lambda: page) as port:
        code, headers, body = get(port, "/")
        assert code == 200
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert int(headers["Content-Length"]) == len(body)
        assert body == render_page(page)
        assert get(port, "/?refresh=1")[2] == body  # a query string is the same page

        code, headers, body = get(port, "/metrics")
        assert code == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        assert body == generate_latest(metrics.registry)
        assert get(port, "/healthz")[:1] == (200,)
        assert get(port, "/healthz")[2] == b"ok\n"
        for path in ("/index.html", "/metrics/", "/favicon.ico", "/healthz/x"):
            assert get(port, path)[0] == 404, path


def test_without_a_status_page_the_root_is_404() -> None:
    with Endpoint(Metrics()) as port:
        assert get(port, "/")[0] == 404
        assert get(port, "/metrics")[0] == 200


@pytest.mark.parametrize(
    "error",
    [
        LedgerError("could not connect to postgresql://popvault:***@db/popvault: pw-Ledger-99"),
        RuntimeError("a bug holding pw-Ledger-99"),
    ],
    ids=["ledger", "bug"],
)
def test_an_unreadable_status_is_a_500_that_names_nothing(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    def failing() -> PageData:
        raise error

    with Endpoint(Metrics(), failing) as port:
        code, headers, body = get(port, "/")
    assert code == 500
    assert headers["Cache-Control"] == "no-store"
    assert body.startswith(b"status page unavailable")
    assert b"pw-Ledger-99" not in body
    assert b"postgresql" not in body
    assert "status page" in caplog.text  # the daemon's log says what went wrong


# -- the daemon's page ------------------------------------------------------------


def test_the_daemon_shows_its_own_run_in_progress_and_a_closed_ledger_is_a_500(
    ws: Workspace,
) -> None:
    with FakePop3Server(sample_messages(6), username="bob", password=PASSWORD) as slow:
        slow.delay = 0.1  # about two seconds a run: long enough to be seen running
        ws.write_config([account("slow", slow, every="1h")])
        config = config_module.load(ws.config)
        ledger = Ledger.open(config.ledger_url)
        daemon = ArchiveDaemon(config, ledger)
        daemon.start()
        try:
            with Endpoint(Metrics(), daemon.status_page) as port:

                def state() -> str:
                    return PageView(get(port, "/")[2].decode()).row("slow")["State"]

                seen = wait_for(lambda: state().startswith("running now") and state())
                assert seen == f"running now by this daemon ({daemon.host} pid {daemon.pid})"
                wait_for(lambda: state() == "ok", what="the run to end")
                cells = PageView(get(port, "/")[2].decode()).row("slow")
                assert cells["Archived"].split(" ")[0] == str(len(ws.archived_files("slow")))
                assert cells["Next run"].endswith(("in 59 min", "in 1 h"))
                assert daemon.stop(10.0)
                ledger.close()
                code, _, body = get(port, "/")
                assert code == 500
                assert body == b"status page unavailable: the ledger could not be read\n"
        finally:
            daemon.stop(10.0)
            ledger.close()


# -- in a browser -----------------------------------------------------------------


def chromium_or_skip() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)", what="browser")
    return binary


def chromium(binary: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    """Headless Chromium with a profile of its own (nothing of the machine's), bounded in time."""
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # root in CI: Chromium's sandbox refuses to run as root
        "--disable-gpu",
        f"--user-data-dir={profile}",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, timeout=30, check=True)


def png_size(data: bytes) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk (PNG spec 11.2.2)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_pixel_bytes(data: bytes) -> bytes:
    """The PNG's image data, inflated (its IDAT chunks joined)."""
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        if data[at + 4 : at + 8] == b"IDAT":
            chunks.append(data[at + 8 : at + 8 + length])
        at += 12 + length
    return zlib.decompress(b"".join(chunks))


@pytest.mark.dovecot
def test_a_person_sees_the_accounts_in_chromium(
    dovecot: DovecotServer,
    dovecot_mailbox: DovecotMailbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    daemons: list[DaemonProcess],
) -> None:
    browser = chromium_or_skip()
    began = time.monotonic()
    ws = Workspace(tmp_path)
    refused = dovecot.add_user()
    monkeypatch.setenv("PW_GOOD", dovecot_mailbox.password)
    monkeypatch.setenv("PW_BAD", "certainly-not-the-password")
    for raw in sample_messages(4, seed=5):
        dovecot_mailbox.deliver(raw)
    port = free_port()
    ws.write_config(
        [
            # One run each: the page is read while nothing runs.
            dovecot_account(dovecot, dovecot_mailbox.username, "good", every="1h"),
            dovecot_account(dovecot, refused.username, "bad", every="1h"),
        ]
    )
    ws.config.write_text(
        ws.config.read_text() + f'\n[daemon]\nmetrics = "127.0.0.1:{port}"\n', encoding="utf-8"
    )
    daemon = DaemonProcess(ws)
    daemons.append(daemon)

    wait_for(lambda: daemon.logged("daemon started"), what="the ledger to be made")

    def outcomes() -> dict[str, str]:
        return dict(ws.ledger_rows("SELECT account, outcome FROM runs"))

    wait_for(lambda: outcomes() == {"good": "ok", "bad": "failed"}, what="both runs to end")
    ((error,),) = ws.ledger_rows("SELECT error FROM runs WHERE account = 'bad'")

    url = f"http://127.0.0.1:{port}/"
    dom = chromium(browser, tmp_path / "profile", "--dump-dom", url).stdout.decode("utf-8")
    page = PageView(dom)
    assert page.summary == "2 accounts: 1 ok, 1 failing"
    good, bad = page.row("good"), page.row("bad")
    assert [row["Account"] for row in page.rows] == ["good", "bad"]  # config order
    assert good["State"] == "ok"
    assert good["Archived"].split(" ")[0] == str(len(ws.archived_files("good"))) == "4"
    assert good["Failing messages"] == "0"
    assert good["Last error"] == "-"
    assert bad["State"].startswith("failing")
    assert bad["Last error"] == redact(error)
    assert "auth" in bad["Last error"].lower()
    assert bad["Last success"] == "never"
    assert "certainly-not-the-password" not in dom
    assert dovecot_mailbox.password not in dom

    # A phone-sized window: it renders, and not as a blank page.
    shot = tmp_path / "page.png"
    chromium(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=390,844", url)
    image = shot.read_bytes()
    assert png_size(image) == (390, 844)
    assert len(set(png_pixel_bytes(image))) > 16, "a blank screenshot"

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert time.monotonic() - began < 15
