"""Test support shipped with popvault: a fake POP3 server and sample messages.

Used by the test suite and by ``popvault demo``. Nothing here imports
:mod:`popvault.pop3`: the fake server must stay an independent peer.
:mod:`popvault.testing.profiles` holds named server styles built from the
fake server's public hooks.
"""

from popvault.testing.fake_server import (
    DEFAULT_CAPABILITIES,
    DEFAULT_LOCK_REFUSAL,
    DEFAULT_LOGIN_REFUSAL,
    VANISHED_REFUSAL,
    FakePop3Server,
    Served,
    Vanished,
)
from popvault.testing.profiles import PROFILES, ServerProfile, unicode_notice
from popvault.testing.samples import large_attachment_message, sample_messages

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_LOCK_REFUSAL",
    "DEFAULT_LOGIN_REFUSAL",
    "PROFILES",
    "VANISHED_REFUSAL",
    "FakePop3Server",
    "Served",
    "ServerProfile",
    "Vanished",
    "large_attachment_message",
    "sample_messages",
    "unicode_notice",
]
