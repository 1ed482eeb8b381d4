"""systemd's notification protocol, by hand: sd_notify(3) without libsystemd.

A unit of ``Type=notify`` (systemd.service(5)) starts the service with the
address of a datagram socket in ``$NOTIFY_SOCKET``; the service tells systemd
its state by sending it newline-separated ``KEY=VALUE`` assignments, one
datagram per notification:

* ``READY=1``: start-up is finished (systemd holds back units ordered after
  this one, and ``systemctl start`` returns, until then);
* ``STATUS=...``: one line of free text, shown by ``systemctl status``;
* ``WATCHDOG=1``: a keep-alive; with ``WatchdogSec=`` set, systemd passes the
  interval in ``$WATCHDOG_USEC`` and restarts the service (``Restart=``) when
  no keep-alive came for that long;
* ``RELOADING=1`` ... ``READY=1`` around a configuration reload (systemd 253
  and later track it; earlier versions ignore the assignment);
* ``STOPPING=1``: shutdown has begun.

Without ``$NOTIFY_SOCKET`` (started by hand, or by a ``Type=simple`` unit)
every call does nothing. A notification that cannot be sent is dropped and
logged (a warning the first time, then at debug level until a send works
again): the daemon's work never depends on systemd hearing it, and nothing
here raises.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import MutableMapping
from typing import Final

from popvault.redaction import redact

log = logging.getLogger("popvault.daemon")

# A send waits at most this long for room in the receiver's queue (a Linux
# AF_UNIX datagram queue holds net.unix.max_dgram_qlen = 10 datagrams by
# default): a systemd too busy to read never stalls the daemon for longer.
SEND_TIMEOUT_S: Final = 1.0
# sd_watchdog_enabled(3) asks for a keep-alive every half of $WATCHDOG_USEC;
# the caller's loop checks at least every half of our pace (see
# Watchdog.poll_s), so the keep-alives come every quarter of it and never
# more than three eighths apart: a late loop step or two do not cost a restart.
WATCHDOG_SHARE: Final = 0.25
# The variables systemd sets (sd_notify(3), sd_watchdog_enabled(3)).
ENVIRONMENT: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The ``socket.sendto`` address of a ``$NOTIFY_SOCKET`` value; None for one we cannot use.

    sd_notify(3): an absolute path, or an abstract socket when the value
    begins with "@" (the "@" stands for the leading NUL byte of a Linux
    abstract address). Its ``vsock:`` addresses (for virtual machines) are
    not supported: there is no such socket in a service's own namespace.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def watchdog_usec(environ: MutableMapping[str, str], pid: int) -> int | None:
    """The watchdog interval in microseconds, when it is this process's to keep; else None.

    sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` is the interval; when
    ``$WATCHDOG_PID`` is set and names another process (a child that
    inherited the environment), the watchdog is not ours to feed.
    """
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """Sends sd_notify(3) notifications to one socket; thread-safe; a no-op without one."""

    def __init__(self, address: str | bytes | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address is not None else None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environment(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        pid: int | None = None,
        unset: bool = True,
    ) -> Notifier:
        """A notifier for the socket systemd named (none named: one that does nothing).

        ``unset`` removes the variables afterwards, as sd_notify(3)'s
        ``unset_environment`` does, so that a child process (a password
        command) cannot speak for the daemon; ``NotifyAccess=main`` in the
        unit also makes systemd ignore anyone else.
        """
        environ = os.environ if environ is None else environ
        value = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket path: not notifying systemd", value)
        usec = watchdog_usec(environ, os.getpid() if pid is None else pid)
        if unset:
            for name in ENVIRONMENT:
                environ.pop(name, None)
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; True when it was sent. Never raises."""
        if self.address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(data, self.address)
        except OSError as exc:  # gone, refused, full (TimeoutError is an OSError)
            self._failed(assignments[0], exc)
            return False
        with self._lock:
            self._warned = False
        return True

    def _failed(self, first: str, exc: OSError) -> None:
        with self._lock:
            warned, self._warned = self._warned, True
        level = logging.DEBUG if warned else logging.WARNING
        log.log(level, "could not notify systemd (%s): %s", first, exc.strerror or exc)

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``, with a ``STATUS=`` line when given."""
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.send(*_status(text))

    def reloading(self) -> bool:
        """``RELOADING=1``, stamped with ``MONOTONIC_USEC=`` as sd_notify(3) asks; then ready()."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive (see :class:`Watchdog` for when)."""
        return self.send("WATCHDOG=1")


def _status(text: str | None) -> tuple[str, ...]:
    # One line: a newline would start another assignment (a forged READY=1 or
    # MAINPID=), so control characters are rendered visibly, and secrets masked.
    return () if text is None else (f"STATUS={redact(text)}",)


class Watchdog:
    """When to send ``WATCHDOG=1``: from the caller's own loop, never from a timer.

    The loop calls :meth:`beat` on every step and waits at most
    :attr:`poll_s` between steps; the keep-alive then goes out every
    :data:`WATCHDOG_SHARE` of the interval. A loop that hangs stops the
    keep-alives, which is the point: systemd restarts a daemon whose loop no
    longer runs. Without a watchdog interval, :meth:`beat` does nothing.
    """

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        usec = notifier.watchdog_usec
        self.every: float | None = None if usec is None else usec / 1e6 * WATCHDOG_SHARE
        self._last: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether systemd watches this process."""
        return self.every is not None

    def poll_s(self, default: float) -> float:
        """The longest the loop may wait between two steps: ``default``, or less to keep pace."""
        return default if self.every is None else min(default, self.every / 2)

    def beat(self, now: float | None = None) -> bool:
        """Send ``WATCHDOG=1`` if a quarter interval passed since the last one; True if sent."""
        if self.every is None:
            return False
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return self._notifier.watchdog()
