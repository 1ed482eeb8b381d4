"""The awkward corpus shared by the server-profile tests and the peer-server tests."""

from __future__ import annotations

from popvault.testing import sample_messages


def corpus() -> list[bytes]:
    """Awkward messages, as a server stores them (CRLF line ends).

    Raw UTF-8 headers, no final newline, a bare CR, a 5000-octet line, a
    20,000-line body, and two byte-identical messages.
    """
    twin = b"From: twin@example.org\r\nSubject: twice\r\nMessage-ID: <t@x>\r\n\r\nsame\r\n"
    return [
        *sample_messages(3, seed=2),
        "From: Jörg <j@example.org>\r\nSubject: Grüße\r\n\r\nÄpfel.\r\n".encode(),
        b"From: a@example.org\r\nSubject: no final newline\r\n\r\nlast line, no end",
        b"From: a@example.org\r\nSubject: bare CR\r\n\r\none\rline\r\n",
        b"From: a@example.org\r\nSubject: long line\r\n\r\n" + b"x" * 5000 + b"\r\n",
        b"From: a@example.org\r\nSubject: many lines\r\n\r\n"
        + b"".join(b"line %d\r\n" % i for i in range(20_000)),
        twin,
        twin,
    ]
