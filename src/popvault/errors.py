"""The one exception tree of popvault.

Every error popvault raises on purpose is a :class:`PopvaultError`. Foreign
exceptions (``OSError``, ``ssl.SSLError``, SQLAlchemy's) are mapped once, where
they arise, into one of these; callers never see the foreign type.

::

    PopvaultError
     +-- ConfigError(file, account, key, variable)    exit status 2
     +-- Pop3Error(account)
     |    +-- TransportError
     |    |    +-- ConnectError
     |    |    +-- Pop3Timeout
     |    |    |    +-- DeadlineExceeded    a phase's deadline or a reply's minimum rate
     |    |    +-- ReadError
     |    |    +-- WriteError
     |    |    +-- TLSError
     |    +-- ProtocolError
     |    |    +-- RemoteProtocolError                the server broke the RFC
     |    |    +-- LocalProtocolError                 our own misuse of the protocol
     |    +-- ServerError(code, text)                  the server said -ERR
     |    |    +-- AuthError           [AUTH], or a refused login from a server without codes
     |    |    +-- LoginRefused        a refused login that is not about the credentials
     |    |    +-- InUseError          [IN-USE]       (RFC 2449 section 8.1.1)
     |    |    +-- LoginDelayError     [LOGIN-DELAY]  (RFC 2449 section 8.1.2)
     |    |    +-- TemporaryError      [SYS/TEMP]     (RFC 3206 section 4)
     |    +-- SecurityPolicyError                      we refused to go on (no STLS, plaintext)
     +-- CredentialsError(account)                     no credentials to log in with
     |    +-- OAuthError(error)                        an OAuth 2.0 authorization server refused
     |         +-- ReauthorizationRequired             the grant is gone: `popvault auth login NAME`
     |         +-- OAuthUnavailable                    network, timeout, 5xx, 429: retry later
     |         +-- AuthorizationFailed                 a login did not complete (denied, expired)
     +-- StoreError                                    disk full, read-only, permissions
     |    +-- ArchiveMismatch                          the archive root is not the ledger's
     +-- ImportFileError(path, line)                   another tool's state file or archive
     +-- LedgerError
          +-- DatabaseUnavailable
          +-- SchemaMismatch
          +-- LedgerDamaged                           a SQLite file that is not a sound database
          +-- ArchiveNotInLedger                      message files the ledger does not know
          +-- LeaseLost(account, token)               the account's lease passed to another claim

This module imports nothing from popvault, so that every other module may
import it.
"""

from __future__ import annotations


class PopvaultError(Exception):
    """Base of every error popvault raises on purpose."""


class ConfigError(PopvaultError):
    """The configuration is unreadable or invalid.

    ``file``, ``account`` and ``key`` say where, as far as they are known, so
    that the message points the user at the line to fix. ``variable`` names
    the ``POPVAULT_*`` environment variable a bad value came from instead:
    then the file is not to blame.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        account: str | None = None,
        key: str | None = None,
        variable: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.account = account
        self.key = key
        self.variable = variable
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.variable is not None:
            where.append(f"environment variable {self.variable}")
        if self.file is not None:
            where.append(str(self.file))
        if self.account is not None:
            where.append(f"account {self.account!r}")
        if self.key is not None:
            where.append(f"key {self.key!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class _AccountError(PopvaultError):
    """An error of one account: its text starts with the account's name, when known."""

    def __init__(self, message: str, *, account: str | None = None) -> None:
        self.message = message
        self.account = account
        super().__init__(message)

    def __str__(self) -> str:
        if self.account is not None:
            return f"account {self.account!r}: {self.message}"
        return self.message


class Pop3Error(_AccountError):
    """Anything that went wrong talking POP3 to one account's server.

    ``account`` is filled in by the client (which knows the account name),
    not by the sans-IO core (which does not).
    """


class TransportError(Pop3Error):
    """The connection failed: network, DNS, TLS or a timeout."""


class ConnectError(TransportError):
    """The TCP connection could not be made (refused, unreachable, DNS)."""


class Pop3Timeout(TransportError):
    """The server did not answer within the configured timeout."""


class DeadlineExceeded(Pop3Timeout):
    """A phase took longer than its deadline, or a reply came slower than the minimum rate.

    The message says which: the greeting and login, the session, or the
    reply to a command (popvault.pop3.pace).
    """


class ReadError(TransportError):
    """Reading from the connection failed or the server closed it early."""


class WriteError(TransportError):
    """Writing to the connection failed."""


class TLSError(TransportError):
    """The TLS handshake failed, including certificate verification."""


class ProtocolError(Pop3Error):
    """The POP3 conversation broke its rules."""


class RemoteProtocolError(ProtocolError):
    """The server sent something RFC 1939 does not allow."""


class LocalProtocolError(ProtocolError):
    """popvault tried to do something the protocol state does not allow."""


class SecurityPolicyError(Pop3Error):
    """popvault refused to continue because that would weaken security.

    For example ``security = "starttls"`` against a server without STLS, or a
    password over a plain connection without ``allow_plaintext = true``.
    """


class ServerError(Pop3Error):
    """The server answered ``-ERR``.

    ``code`` is the RFC 2449 extended response code (``"IN-USE"``,
    ``"SYS/TEMP"``, ...) or ``None``; ``text`` is what the server said. The
    message quotes the server's words; what the refusal means
    (:meth:`meaning`) goes in front of them and ``note`` after them.
    """

    def __init__(
        self,
        text: str,
        *,
        code: str | None = None,
        command: str | None = None,
        account: str | None = None,
        note: str | None = None,
    ) -> None:
        self.text = text
        self.code = code
        self.command = command
        said = f"-ERR [{code}] {text}" if code else f"-ERR {text}"
        where = f"{command}: " if command else ""
        message = f"{where}server said {said.rstrip()!r}"
        meaning = self.meaning()
        if meaning:
            message = f"{meaning}: {message}"
        if note:
            message = f"{message} ({note})"
        super().__init__(message, account=account)

    def meaning(self) -> str | None:
        """What this kind of refusal means to the user, or None."""
        return None


class AuthError(ServerError):
    """The server refused the credentials.

    ``[AUTH]`` (RFC 3206 section 5) says so for certain. A plain ``-ERR`` to a
    login from a server that does not announce response codes may also be the
    password: ``certain`` is False then, and popvault stays just as careful
    (it retries slowly) but does not claim the password is wrong.
    """

    def __init__(
        self,
        text: str,
        *,
        code: str | None = None,
        command: str | None = None,
        account: str | None = None,
        note: str | None = None,
        certain: bool = True,
    ) -> None:
        self.certain = certain
        super().__init__(text, code=code, command=command, account=account, note=note)

    def meaning(self) -> str:
        """Whether the server said the credentials are wrong, or only refused."""
        if self.certain:
            return "the server refused the credentials"
        return "the server refused the login without saying why"


class LoginRefused(ServerError):
    """A refused login that is not about the credentials.

    The server announced response codes (RFC 2449 RESP-CODES, RFC 3206
    AUTH-RESP-CODE) and did not send ``[AUTH]``: the mailbox or the server is
    at fault, not the password, so the account is retried like any other
    server failure.
    """

    def meaning(self) -> str:
        """A refusal for another reason than the credentials."""
        return "the server refused the login, not because of the credentials"


class InUseError(ServerError):
    """The mailbox is locked by another session ([IN-USE])."""


class LoginDelayError(ServerError):
    """Logged in again too soon ([LOGIN-DELAY])."""


class TemporaryError(ServerError):
    """A temporary server-side failure ([SYS/TEMP])."""


class CredentialsError(_AccountError):
    """popvault could not get the credentials to log in to one account with.

    Not a refusal by the POP3 server (that is :class:`AuthError`): the
    credentials never reached it. ``account`` names the account, when known.
    """


class OAuthError(CredentialsError):
    """An exchange with an OAuth 2.0 authorization server failed.

    ``error`` is the OAuth error code the server sent (RFC 6749 section 5.2,
    e.g. ``"invalid_client"``), or None when it sent none. Raised as this
    class itself for refusals a person must look at that are not about the
    grant (a wrong client id or secret, a scope the client may not ask for).
    """

    def __init__(
        self, message: str, *, error: str | None = None, account: str | None = None
    ) -> None:
        self.error = error
        super().__init__(message, account=account)


class ReauthorizationRequired(OAuthError):
    """The account's OAuth grant is gone: only a new login brings it back.

    The refresh token was refused (``invalid_grant``: revoked, expired, the
    password changed, consent withdrawn) or there is no token file. Retrying
    cannot help, so the daemon should wait for a person (a slow backoff). The
    message says what to do: ``popvault auth login NAME``.
    """

    def __init__(self, reason: str, *, account: str, error: str | None = "invalid_grant") -> None:
        self.reason = reason
        message = f"{reason}; run `popvault auth login {account}` to sign in again"
        super().__init__(message, error=error, account=account)


class OAuthUnavailable(OAuthError):
    """The authorization server could not be reached or failed (network, timeout, 5xx, 429).

    Transient: the same request may well succeed later (a network backoff).
    """


class AuthorizationFailed(OAuthError):
    """An interactive login did not complete.

    The user denied access, the device code expired, the redirect carried the
    wrong ``state``, or the login timed out. ``popvault auth login`` reports
    it; nothing retries it on its own.
    """


class StoreError(PopvaultError):
    """Writing or reading the archive on disk failed."""


class ArchiveMismatch(StoreError):
    """The archive root (or an account's own folder) is not where the ledger's files live.

    Its marker file (``.popvault-ledger``, popvault.store.marker) names
    another ledger, or it has no marker and none of the files the ledger
    archived last is there: another popvault's archive, an unmounted or wrong
    share. ``popvault daemon`` and ``popvault run`` refuse to start before
    anything is fetched; the message names the folder, both ledger ids (or
    the missing files) and what to do.
    """


class ImportFileError(PopvaultError):
    """Another tool's state file (or archive) cannot be imported as it is.

    A line that is not of the tool's format, a UIDL that is not one (RFC 1939
    section 7), no entry for the account. The message names the file and the
    1-based line number and quotes the line; ``popvault import`` then
    imports nothing from that file.
    """

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        super().__init__(message)


class LedgerError(PopvaultError):
    """The ledger database failed."""


class DatabaseUnavailable(LedgerError):
    """The ledger database cannot be reached, or is locked past the timeout."""


class SchemaMismatch(LedgerError):
    """The ledger's schema is not the one this popvault expects.

    The message names the command to run (``popvault db upgrade``).
    """


class LedgerDamaged(LedgerError):
    """The ledger's SQLite file is damaged (not a database, or a malformed one).

    The message names the file, the backups popvault made before schema
    upgrades, and how to put one back.
    """


class ArchiveNotInLedger(LedgerError):
    """An account's archive folder holds message files while the ledger knows none of them.

    The ledger was deleted, replaced or pointed elsewhere, or the account
    renamed: archiving now would store every message a second time, so the
    run refuses before it fetches anything. The message names the ways out.
    """


class LeaseLost(LedgerError):
    """The account's lease is no longer held by the run that tried to use it.

    It expired, was released, or another claim took it and got a newer
    fencing token (popvault.ledger.leases). A fenced write that raises it
    wrote nothing; the run must stop at once: no more ledger writes, no DELE,
    and no QUIT (a session dropped without QUIT deletes nothing, RFC 1939
    section 6). The account's new holder settles whatever the run left.
    ``account`` and ``token`` name the lost lease.
    """

    def __init__(self, message: str, *, account: str, token: int) -> None:
        self.account = account
        self.token = token
        super().__init__(message)
