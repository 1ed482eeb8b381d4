"""The daemon's read-only status page at ``/``: ``popvault status`` as HTML.

:func:`render_page` is a pure function of a :class:`PageData` (the rows of
:func:`popvault.status.account_statuses`, the time they were read, the
daemon serving them): plain HTML5, inline CSS, no script and no external
asset, so it works from a phone on a network without the internet and under
a ``Content-Security-Policy`` that forbids everything but inline style.

Every text on it is untrusted: account names come from the ledger (an
account no longer in the config may be named anything) and errors are
server text. Each one passes :func:`popvault.redaction.redact` (the secrets
registered in this process masked, control characters made visible, as
``status`` shows them) and then :func:`html.escape`, in one place
(:func:`_text`). Nothing else from a row reaches the page: no username, no
password, no held message's UIDL.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from popvault.humanize import human_size
from popvault.redaction import redact
from popvault.status import StatusRow

# The page reloads itself this often (seconds): the daemon's schedule rows
# are refreshed every minute (daemon.main.HEARTBEAT_S), so faster shows nothing new.
REFRESH_S: Final = 60


@dataclass(frozen=True)
class PageData:
    """What the page shows: the status rows and who read them when.

    ``served_by`` names the daemon serving the page (``host pid 42``);
    ``running_here`` are the accounts that daemon is running now (on SQLite
    there are no leases to say so, and this daemon is the only one).
    """

    rows: Sequence[StatusRow]
    generated_at: datetime
    served_by: str
    running_here: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccountState:
    """An account's state as a badge: ``kind`` (its CSS class), ``label``, and a detail line."""

    kind: str
    label: str
    detail: str | None = None


# The states in the order the summary line counts them.
STATE_LABELS: Final = {
    "ok": "ok",
    "failing": "failing",
    "partial": "partial",
    "interrupted": "interrupted",
    "running": "running now",
    "never": "never run",
}


def account_state(row: StatusRow, page: PageData) -> AccountState:
    """The account's state: running now (and by whom), never run, failing, partial, interrupted, ok.

    Running comes first: a run in progress is what a person most wants to
    know about, whatever the previous one did (its error stays on the row).
    Failing: the latest run failed, or the daemon counts failed runs in a row.
    """
    running = _running_state(row, page)
    if running is not None:
        return running
    if row.last_run_at is None:
        return AccountState("never", STATE_LABELS["never"])
    return _last_run_state(row)


def _running_state(row: StatusRow, page: PageData) -> AccountState | None:
    """Running now, by whom: this daemon, a lease's holder (PostgreSQL), another process."""
    if row.name in page.running_here:
        by = f"by this daemon ({page.served_by})"
    elif row.running_by is not None:
        since = "" if row.running_since is None else f" since {_when(row.running_since)}"
        by = f"by {row.running_by}{since}"
    elif row.last_outcome == "running":
        by = "by another popvault process"  # SQLite: a `popvault run`, no lease to name it
    else:
        return None
    return AccountState("running", STATE_LABELS["running"], by)


def _last_run_state(row: StatusRow) -> AccountState:
    in_a_row = row.consecutive_failures or 0
    if row.last_outcome == "failed" or in_a_row > 0:
        detail = f"{in_a_row} failed run(s) in a row" if in_a_row else None
        return AccountState("failing", STATE_LABELS["failing"], detail)
    if row.last_outcome == "partial":
        return AccountState("partial", STATE_LABELS["partial"], "some messages failed")
    if row.last_outcome == "interrupted":
        return AccountState("interrupted", STATE_LABELS["interrupted"], "stopped before it ended")
    return AccountState("ok", STATE_LABELS["ok"])


def summary_line(states: Sequence[AccountState]) -> str:
    """``3 accounts: 2 ok, 1 failing``, then the other states there are (``, 1 running now``)."""
    counts = Counter(state.kind for state in states)
    total = len(states)
    parts = [f"{counts['ok']} ok", f"{counts['failing']} failing"]
    parts += [
        f"{counts[kind]} {label}"
        for kind, label in STATE_LABELS.items()
        if kind not in ("ok", "failing") and counts[kind]
    ]
    return f"{total} account{'' if total == 1 else 's'}: {', '.join(parts)}"


def render_page(page: PageData) -> bytes:
    """The whole page as UTF-8 HTML5."""
    states = [account_state(row, page) for row in page.rows]
    generated = _when(page.generated_at)
    body = [
        "<header>",
        "<h1>popvault</h1>",
        f'<p class="summary">{_text(summary_line(states))}</p>',
        f'<p class="meta">generated {_time(page.generated_at)} by {_text(page.served_by)};'
        f" reloads every {REFRESH_S} s</p>",
        "</header>",
        "<main>",
        _table(page, states),
        "</main>",
    ]
    document = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        f"<title>popvault status: {_text(generated)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
        "",
    ]
    # "replace": a lone surrogate (never from the ledger's UTF-8, but a str may hold
    # one) becomes "?" instead of failing the whole page.
    return "\n".join(document).encode("utf-8", "replace")


# The columns, in order: each cell carries its header as data-label, which the
# narrow-screen layout shows beside the value (the table becomes one card per account).
COLUMNS: Final = (
    "Account",
    "State",
    "Last success",
    "Next run",
    "Archived",
    "Failing messages",
    "Held",
    "Last error",
)


def _table(page: PageData, states: Sequence[AccountState]) -> str:
    if not page.rows:
        return '<p class="empty">No accounts configured and none in the ledger.</p>'
    head = "".join(f'<th scope="col">{_text(name)}</th>' for name in COLUMNS)
    rows = [
        _row(row, state, page.generated_at) for row, state in zip(page.rows, states, strict=True)
    ]
    return "\n".join(
        ["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>", *rows, "</tbody>", "</table>"]
    )


def _row(row: StatusRow, state: AccountState, now: datetime) -> str:
    cells = (
        _account_cell(row),
        _state_cell(state),
        _moment(row.last_success_at, now, absent="never"),
        _moment(row.next_run_at, now, absent="not planned"),
        _archived_cell(row),
        _count_cell(row.failed_messages),
        _count_cell(row.held_messages),
        _error_cell(row.last_error),
    )
    tds = "".join(
        f'<td data-label="{_text(label)}">{cell}</td>'
        for label, cell in zip(COLUMNS, cells, strict=True)
    )
    return f'<tr class="{state.kind}">{tds}</tr>'


def _account_cell(row: StatusRow) -> str:
    name = f'<span class="name">{_text(row.name)}</span>'
    return name if row.configured else f'{name} <small class="note">not in config</small>'


def _state_cell(state: AccountState) -> str:
    badge = f'<span class="badge {state.kind}">{_text(state.label)}</span>'
    if state.detail is None:
        return badge
    return f'{badge} <small class="detail">{_text(state.detail)}</small>'


def _archived_cell(row: StatusRow) -> str:
    # STORED octets, as `status` shows them (the archived files' size).
    messages = f"{row.archived_messages:,}"
    # Archived elsewhere (`popvault import`): counted apart, popvault holds no copy.
    imported = (
        f' <small class="detail">+{row.imported_messages:,} imported</small>'
        if row.imported_messages
        else ""
    )
    return (
        f'<span class="count">{messages}</span>'
        f' <small class="detail">{_text(human_size(row.archived_bytes))}</small>{imported}'
    )


def _count_cell(count: int) -> str:
    kind = "count warn" if count else "count"
    return f'<span class="{kind}">{count:,}</span>'


def _error_cell(error: str | None) -> str:
    if error is None:
        return '<span class="none">-</span>'
    return f'<span class="error">{_text(error)}</span>'


def _moment(at: datetime | None, now: datetime, *, absent: str) -> str:
    if at is None:
        return f'<span class="none">{_text(absent)}</span>'
    return f'{_time(at)} <small class="detail">{_text(relative(at, now))}</small>'


def _time(at: datetime) -> str:
    return f'<time datetime="{_text(at.astimezone(UTC).isoformat())}">{_text(_when(at))}</time>'


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(at: datetime, now: datetime) -> str:
    """``in 5 min``, ``3 h ago``, ``now``: how far ``at`` is from ``now``, in the largest unit."""
    delta = at - now
    seconds = abs(delta.total_seconds())
    if seconds < 1:
        return "now"
    amount = _amount(timedelta(seconds=seconds))
    return f"in {amount}" if delta > timedelta(0) else f"{amount} ago"


def _amount(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _text(value: str) -> str:
    """Untrusted text for the page: secrets masked, controls visible, then HTML-escaped."""
    return html.escape(redact(value), quote=True)


# Readable on a phone: below 46em the table turns into one card per account,
# each value beside its column's name (data-label). System fonts only: no asset.
_STYLE: Final = """
:root{
  color-scheme:light dark;
  --fg:#1f2328;--muted:#59636e;--bg:#fff;--line:#d1d9e0;--head:#f6f8fa}
@media (prefers-color-scheme:dark){:root{
  --fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;--line:#3d444d;--head:#151b23}}
*{box-sizing:border-box}
body{
  margin:0;padding:1rem;color:var(--fg);background:var(--bg);
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:1.4rem;margin:0 0 .25rem}
.summary{font-size:1.1rem;font-weight:600;margin:0}
.meta,.detail,.note,.none{color:var(--muted)}
.meta{margin:.25rem 0 1rem;font-size:.85rem}
table{border-collapse:collapse;width:100%}
th,td{padding:.45rem .6rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--head);font-size:.8rem;text-transform:uppercase;letter-spacing:.03em}
td .detail{display:block;font-size:.8rem}
.name{font-weight:600;overflow-wrap:anywhere}
.count{font-variant-numeric:tabular-nums}
.warn{color:#bc4c00;font-weight:600}
.error{
  font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem;
  overflow-wrap:anywhere;white-space:pre-wrap}
.badge{
  display:inline-block;padding:.05rem .55rem;border:1px solid;border-radius:1rem;
  font-size:.8rem;font-weight:600;white-space:nowrap}
.badge.ok{color:#116329;background:#dafbe1;border-color:#4ac26b}
.badge.failing{color:#a40e26;background:#ffebe9;border-color:#ff8182}
.badge.partial,.badge.interrupted{color:#7d4e00;background:#fff8c5;border-color:#d4a72c}
.badge.running{color:#0550ae;background:#ddf4ff;border-color:#54aeff}
.badge.never{color:#424a53;background:#eaeef2;border-color:#afb8c1}
.empty{color:var(--muted)}
@media (max-width:46em){
  thead{display:none}
  table,tbody,tr,td{display:block;width:100%}
  tr{border:1px solid var(--line);border-radius:.5rem;margin:0 0 .75rem;padding:.25rem 0}
  td{position:relative;border:0;padding:.3rem .75rem .3rem 9.5rem}
  td::before{
    content:attr(data-label);position:absolute;left:.75rem;width:8.25rem;
    color:var(--muted);font-size:.8rem;line-height:1.8}
  td .detail{display:inline;margin-left:.35rem}
}
""".strip()
