"""popvault: an incremental POP3 mailbox archiver.

Only the version lives here, so that ``popvault --help`` imports nothing heavy.
"""

__version__ = "0.1.0"
