"""SASL for POP3 (RFC 5034), sans-IO: mechanisms as small objects, an exchange as steps.

A :class:`Mechanism` turns the server's challenges into the client's
responses; it does no I/O. A :class:`SaslExchange` wraps one mechanism in
POP3's framing: the ``AUTH`` command (with the initial response on the
command line when it fits RFC 2449's 255 octets and the server takes it,
else after the server's empty ``+`` challenge), one response per
:class:`~popvault.pop3.events.Continuation`, and the final check at ``+OK``.
:func:`choose_mechanism` picks what ``auth = "auto"`` or a named method
means against a server's SASL offer, and never falls back below a named one.

Mechanisms: ``PLAIN`` (RFC 4616), ``SCRAM-SHA-256`` (RFC 7677) and
``SCRAM-SHA-1`` (RFC 5802) through scramp, which also verifies the server's
signature; ``XOAUTH2`` (Google's and Microsoft's format) and ``OAUTHBEARER``
(RFC 7628). scramp is imported only when a SCRAM exchange starts.

Errors follow the core's contract: whatever the server sends ends in a
response or a :class:`~popvault.errors.RemoteProtocolError`; a SCRAM server
that cannot prove it knows the password is a
:class:`~popvault.errors.SecurityPolicyError`.
"""

from __future__ import annotations

import abc
import base64
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from popvault.errors import LocalProtocolError, RemoteProtocolError, SecurityPolicyError
from popvault.pop3.commands import (
    AuthResponse,
    Command,
    fits_command_line,
    initial_response_argument,
)

#: Every value of an account's ``auth`` setting.
AuthMethod = Literal[
    "auto", "user", "apop", "plain", "scram-sha-256", "scram-sha-1", "xoauth2", "oauthbearer"
]
#: How XOAUTH2 sends the token: on the AUTH line when it fits, or always after a
#: "+" (Microsoft's POP3 server answers the one-line form "-ERR Protocol error").
XOAuth2Form = Literal["one-line", "two-step"]
#: What a login uses once chosen: USER/PASS, APOP, or a SASL mechanism's name.
LoginPlan = Literal[
    "user", "apop", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "XOAUTH2", "OAUTHBEARER"
]

#: The SASL mechanism of each named ``auth`` value.
SASL_NAMES: Final[Mapping[str, LoginPlan]] = {
    "plain": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-1": "SCRAM-SHA-1",
    "xoauth2": "XOAUTH2",
    "oauthbearer": "OAUTHBEARER",
}
#: ``auth = "auto"`` with a password: the strongest the server offers, in this
#: order (SCRAM never sends the password; PLAIN and USER/PASS do). APOP only
#: when named: its MD5 digest is weaker than TLS-protected PLAIN on every count.
PASSWORD_ORDER: Final[tuple[LoginPlan, ...]] = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
#: ... with an OAuth token: the standard one first.
OAUTH_ORDER: Final[tuple[LoginPlan, ...]] = ("OAUTHBEARER", "XOAUTH2")
OAUTH_PLANS: Final = frozenset(OAUTH_ORDER)


def sasl_offer(capabilities: Mapping[str, Sequence[str]]) -> list[str]:
    """The SASL mechanisms a CAPA listing offers (RFC 2449 section 6.3), upper-cased."""
    return [name.upper() for name in capabilities.get("SASL", ())]


def choose_mechanism(
    method: AuthMethod,
    capabilities: Mapping[str, Sequence[str]],
    *,
    has_password: bool,
    has_token: bool,
    before_tls: Mapping[str, Sequence[str]] | None = None,
) -> LoginPlan:
    """What a login with ``auth = method`` uses against a server with ``capabilities``.

    ``capabilities`` are the ones read last (after STLS: the only ones TLS
    vouches for); ``before_tls`` those read in clear text, only to say in an
    error that the offer changed. ``"auto"`` takes the strongest mechanism
    offered for which the account has credentials (:data:`OAUTH_ORDER` with
    a token, else :data:`PASSWORD_ORDER`, else USER/PASS). A named SASL
    mechanism the server does not offer raises
    :class:`~popvault.errors.SecurityPolicyError`: never a silent fall back.
    """
    offered = sasl_offer(capabilities)
    if method == "auto":
        return _auto(offered, capabilities, has_password=has_password, has_token=has_token)
    if method in ("user", "apop"):
        _need(method, has_password=has_password, has_token=has_token)
        return method
    plan = SASL_NAMES[method]
    _need(method, has_password=has_password, has_token=has_token)
    if plan not in offered:
        raise SecurityPolicyError(_not_offered(method, plan, capabilities, before_tls))
    return plan


def _auto(
    offered: Sequence[str],
    capabilities: Mapping[str, Sequence[str]],
    *,
    has_password: bool,
    has_token: bool,
) -> LoginPlan:
    if has_token:
        for plan in OAUTH_ORDER:
            if plan in offered:
                return plan
        raise SecurityPolicyError(
            "the account signs in with OAuth, but the server offers neither OAUTHBEARER "
            f"nor XOAUTH2 ({_describe_offer(capabilities)})"
        )
    if not has_password:
        raise LocalProtocolError("no password and no OAuth token to log in with")
    return next((plan for plan in PASSWORD_ORDER if plan in offered), "user")


def _need(method: str, *, has_password: bool, has_token: bool) -> None:
    oauth = method in ("xoauth2", "oauthbearer")
    if oauth and not has_token:
        raise LocalProtocolError(f"auth = {method!r} needs an OAuth token source")
    if not oauth and not has_password:
        raise LocalProtocolError(f"auth = {method!r} needs a password")


def _not_offered(
    method: str,
    plan: str,
    capabilities: Mapping[str, Sequence[str]],
    before_tls: Mapping[str, Sequence[str]] | None,
) -> str:
    message = (
        f"auth = {method!r}, but the server does not offer SASL {plan} "
        f"({_describe_offer(capabilities)}); refusing to log in another way"
    )
    if before_tls is not None and plan in sasl_offer(before_tls):
        message += (
            f". It offered {plan} before STLS and withdrew it after: a downgrade, "
            "by the server's configuration or by someone on the path"
        )
    return message


def _describe_offer(capabilities: Mapping[str, Sequence[str]]) -> str:
    offered = sasl_offer(capabilities)
    sasl = f"it offers SASL {' '.join(offered)}" if offered else "it offers no SASL mechanism"
    if not capabilities:
        return f"{sasl}; it sent no capabilities"
    return f"{sasl}{' and USER' if 'USER' in capabilities else ''}"


# -- mechanisms ------------------------------------------------------------------------


class Mechanism(abc.ABC):
    """One SASL mechanism, client side: the first message, then a response per challenge.

    ``secrets`` are the credentials it holds (registered with the redaction
    point by the caller before anything is sent). ``server_error`` is what
    the server explained in an error challenge (XOAUTH2's and OAUTHBEARER's
    JSON, SCRAM's ``e=``), for the message of the ``-ERR`` that follows.
    """

    name: str

    def __init__(self) -> None:
        self.server_error: str | None = None

    @property
    @abc.abstractmethod
    def secrets(self) -> tuple[str, ...]:
        """The credentials in this mechanism (never logged or shown)."""

    @abc.abstractmethod
    def initial(self) -> bytes:
        """The client's first message (every mechanism here speaks first)."""

    @abc.abstractmethod
    def respond(self, challenge: bytes) -> bytes:
        """The response to the server's next challenge."""

    def finish(self) -> None:
        """Called at ``+OK``: raise if the exchange did not end as it must."""
        return

    def _unexpected(self, challenge: bytes) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{self.name}: the server sent a challenge ({len(challenge)} octets) "
            "where the exchange had ended"
        )


class Plain(Mechanism):
    """PLAIN (RFC 4616): ``authzid NUL authcid NUL passwd``, no authzid."""

    name = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        super().__init__()
        for what, value in (("user name", username), ("password", password)):
            if "\0" in value:
                raise LocalProtocolError(f"PLAIN: the {what} must not contain NUL (RFC 4616)")
        self._username, self._password = username, password

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._password,)

    def initial(self) -> bytes:
        return b"\0" + self._username.encode() + b"\0" + self._password.encode()

    def respond(self, challenge: bytes) -> bytes:
        raise self._unexpected(challenge)


class Scram(Mechanism):
    """SCRAM-SHA-256 (RFC 7677) or SCRAM-SHA-1 (RFC 5802) by scramp, without channel binding.

    The server's final message must carry its signature, and scramp checks
    it: a server that cannot sign does not know the password (or is not the
    server), and the login is refused even if it then says ``+OK``.
    """

    def __init__(
        self, name: Literal["SCRAM-SHA-256", "SCRAM-SHA-1"], username: str, password: str
    ) -> None:
        super().__init__()
        # Lazily: only a SCRAM login loads scramp (and its imports); it ships no types.
        import scramp  # type: ignore[import-untyped]  # noqa: PLC0415

        self.name = name
        self._password = password
        self._exception: type[Exception] = scramp.ScramException
        self._client: Any = scramp.ScramClient([name], username, password)
        self._step = 0
        self.verified = False

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._password,)

    def initial(self) -> bytes:
        return str(self._client.get_client_first()).encode()

    def respond(self, challenge: bytes) -> bytes:
        self._step += 1
        if self._step == 1:
            return self._client_final(_utf8(self.name, challenge))
        if self._step == 2:
            self._check_server_final(_utf8(self.name, challenge))
            return b""  # RFC 5034 section 4: the last challenge is answered empty
        raise self._unexpected(challenge)

    def _client_final(self, server_first: str) -> bytes:
        try:
            self._client.set_server_first(server_first)
            return str(self._client.get_client_final()).encode()
        except Exception as exc:  # scramp raises several types on bad input
            raise RemoteProtocolError(
                f"{self.name}: the server's first message is malformed ({_scramp_reason(exc)})"
            ) from None

    def _check_server_final(self, server_final: str) -> None:
        if server_final.startswith("e="):
            # RFC 5802 section 7: server-error; the -ERR that follows says the rest.
            self.server_error = server_final[2:80]
            return
        try:
            self._client.set_server_final(server_final)
        except Exception as exc:  # scramp raises several types on bad input
            raise SecurityPolicyError(
                f"{self.name}: the server's signature is wrong ({_scramp_reason(exc)}): it "
                "cannot prove it knows the password, so it may not be the server it claims; "
                "refusing the session"
            ) from None
        self.verified = True

    def finish(self) -> None:
        if not self.verified:
            raise SecurityPolicyError(
                f"{self.name}: the server accepted the login without proving it knows the "
                "password (no valid server signature, RFC 5802 section 5); refusing the session"
            )


class _Bearer(Mechanism):
    """What XOAUTH2 and OAUTHBEARER share: a bearer token sent once, one error challenge.

    A server that refuses the token sends a base64 JSON error as a challenge;
    the client answers it with :attr:`error_answer` and the server then says
    ``-ERR``. A second challenge is a protocol error.
    """

    error_answer: bytes = b""

    def __init__(self, username: str, token: str) -> None:
        super().__init__()
        _check_token(self.name, username, token)
        self._username, self._token = username, token
        self._answered = False

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._token,)

    def respond(self, challenge: bytes) -> bytes:
        if self._answered:
            raise self._unexpected(challenge)
        self._answered = True
        self.server_error = describe_oauth_error(challenge)
        return self.error_answer


class XOAuth2(_Bearer):
    """XOAUTH2 (Google's and Microsoft's): ``user=U ^A auth=Bearer T ^A ^A``.

    Its error challenge is answered with an empty line.
    """

    name = "XOAUTH2"

    def initial(self) -> bytes:
        return f"user={self._username}\x01auth=Bearer {self._token}\x01\x01".encode()


class OAuthBearer(_Bearer):
    """OAUTHBEARER (RFC 7628): ``n,a=U,`` then ``^A auth=Bearer T ^A ^A``.

    An error challenge (RFC 7628 section 3.2.2, JSON) is answered with a lone
    ``^A`` (section 3.2.3).
    """

    name = "OAUTHBEARER"
    error_answer = b"\x01"

    def initial(self) -> bytes:
        # RFC 5801 section 4 saslname: "," and "=" escaped in the authzid.
        name = self._username.replace("=", "=3D").replace(",", "=2C")
        return f"n,a={name},\x01auth=Bearer {self._token}\x01\x01".encode()


def make_mechanism(
    plan: LoginPlan, username: str, *, password: str | None = None, token: str | None = None
) -> Mechanism:
    """The mechanism object for a SASL ``plan`` with the account's credentials."""
    if plan in OAUTH_PLANS:
        if token is None:
            raise LocalProtocolError(f"{plan} needs an OAuth token")
        return XOAuth2(username, token) if plan == "XOAUTH2" else OAuthBearer(username, token)
    if password is None:
        raise LocalProtocolError(f"{plan} needs a password")
    if plan == "PLAIN":
        return Plain(username, password)
    if plan in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        return Scram(plan, username, password)
    raise LocalProtocolError(f"{plan} is not a SASL mechanism popvault speaks")


def describe_oauth_error(challenge: bytes) -> str:
    """A short, single-line account of an OAuth error challenge (RFC 7628 section 3.2.2).

    Google and Microsoft send ``{"status":"401","schemes":"Bearer","scope":...}``;
    anything that is not such JSON is described by its size only.
    """
    try:
        data = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"an error challenge of {len(challenge)} octets that is not JSON"
    if not isinstance(data, dict):
        return "an error challenge that is not a JSON object"
    fields = [f"{key}={data[key]}" for key in ("status", "scope", "schemes") if key in data]
    return ", ".join(str(field)[:120] for field in fields) or "an error challenge without status"


def _check_token(name: str, username: str, token: str) -> None:
    # \x01 separates the fields (RFC 7628 section 3.1); in a value it would end it early.
    if not token or any(c in token for c in "\x01\r\n ") or "\x01" in username:
        raise LocalProtocolError(f"{name}: the OAuth token is empty or malformed")


def _utf8(name: str, challenge: bytes) -> str:
    try:
        return challenge.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{name}: the server's challenge is not UTF-8") from None


def _scramp_reason(exc: Exception) -> str:
    return str(exc.args[0])[:120] if exc.args else type(exc).__name__


# -- the exchange ------------------------------------------------------------------------


class SaslExchange:
    """One ``AUTH`` exchange for ``mechanism``, as sans-IO steps.

    ``initial_response=False`` never puts the first message on the AUTH
    line (XOAUTH2's two-step form); with True it goes there when the line
    fits 255 octets, ``=`` standing for an empty one (RFC 5034 section 4).
    ``on_secret`` is called with every secret before anything carrying it
    is returned: the credentials and the base64 of each message sent.
    """

    def __init__(
        self,
        mechanism: Mechanism,
        *,
        initial_response: bool = True,
        on_secret: Callable[[str], object] = lambda secret: None,
    ) -> None:
        self.mechanism = mechanism
        self._initial_allowed = initial_response
        self._on_secret = on_secret
        self._first: bytes | None = None
        self._first_sent = False
        self.cancelled = False
        for secret in mechanism.secrets:
            on_secret(secret)

    @property
    def name(self) -> str:
        """The mechanism's SASL name."""
        return self.mechanism.name

    def command(self) -> Command:
        """The AUTH command that starts the exchange."""
        if self._first is not None:
            raise LocalProtocolError("the AUTH command was made already")
        self._first = self.mechanism.initial()
        argument = initial_response_argument(self._first)
        self._secret_forms(self._first)
        if self._initial_allowed and fits_command_line("AUTH", self.name, argument):
            self._first_sent = True
            return Command("AUTH", self.name, argument)
        return Command("AUTH", self.name)

    def answer(self, challenge: bytes) -> AuthResponse:
        """The response to a ``+`` challenge (RFC 5034 section 4)."""
        if self._first is None:
            raise LocalProtocolError("a challenge before the AUTH command was made")
        if self.cancelled:
            raise LocalProtocolError("the exchange was cancelled")
        if not self._first_sent:
            # RFC 4422 section 5: without an initial response the server asks
            # for the client's first message with an empty challenge.
            if challenge:
                raise RemoteProtocolError(
                    f"{self.name}: the server's first challenge should be empty "
                    f"(the client speaks first), got {len(challenge)} octets"
                )
            self._first_sent = True
            return self._response(self._first)
        return self._response(self.mechanism.respond(challenge))

    def cancel(self) -> AuthResponse:
        """``*``: give up the exchange (the server then answers ``-ERR``)."""
        self.cancelled = True
        return AuthResponse.cancel()

    def succeeded(self) -> None:
        """The server said ``+OK``: raise if the mechanism did not finish as it must."""
        if self.cancelled:
            raise RemoteProtocolError(f"{self.name}: +OK to a cancelled AUTH exchange")
        self.mechanism.finish()

    def _response(self, raw: bytes) -> AuthResponse:
        self._secret_forms(raw)
        return AuthResponse.of(raw)

    def _secret_forms(self, raw: bytes) -> None:
        for form in _encoded_forms(raw):
            self._on_secret(form)


def _encoded_forms(raw: bytes) -> Iterable[str]:
    """What a server could echo of a message we sent: its base64, and its text."""
    if raw:
        yield base64.b64encode(raw).decode("ascii")
        text = raw.decode("utf-8", "replace")
        # The text form with its separators (NUL, ^A) shown as redaction shows them.
        yield text
