"""Test support shipped with popvault: a fake POP3 server and sample messages.

Used by the test suite and by ``popvault demo``. Nothing here imports
:mod:`popvault.pop3`: the fake server must stay an independent peer.
"""

from popvault.testing.fake_server import FakePop3Server
from popvault.testing.samples import large_attachment_message, sample_messages

__all__ = ["FakePop3Server", "large_attachment_message", "sample_messages"]
