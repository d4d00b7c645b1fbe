"""How the client reaches the relay and image hosts: a proxy, the environment's proxies, the
certificates TLS trusts, and a caller's own aiohttp session.

Through a proxy the key must reach an https relay only inside the CONNECT tunnel. aiohttp sends
a session's default headers on the CONNECT request too (as Proxy-Authorization when they hold
an Authorization header), so whenever a proxy may be used the key travels on each request
instead (`Network.key_in_session` is False). A plain-http relay reached through a proxy would
show the key to the proxy: that is refused unless `allow_insecure_http`. Image downloads never
carry the key, whatever the proxy.
"""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
from typing import Any

import aiohttp
import attrs
import yarl

from ._exceptions import ConfigurationError

__all__ = ["Network", "env_proxy"]

_PROXY_SCHEMES = ("http", "https")


def _hide_userinfo(url: yarl.URL | None) -> str:
    return "None" if url is None else repr(str(url.with_user(None)))


@functools.lru_cache(maxsize=8)
def _bundle_context(cafile: str) -> ssl.SSLContext:
    """The system's trusted certificates plus those of `cafile` (made once per bundle)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=cafile)
    return context


def _proxy_url(value: str | yarl.URL, where: str) -> yarl.URL:
    try:
        url = yarl.URL(str(value).strip())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where} is not a URL") from exc
    if url.scheme not in _PROXY_SCHEMES or not url.host:  # not echoed: it may hold a password
        raise ConfigurationError(
            f"{where} must be an http:// or https:// proxy URL with a host, such as "
            f"'http://proxy.internal:3128' (its scheme is {url.scheme or 'missing'!r})"
        )
    return url


def env_proxy(url: yarl.URL) -> yarl.URL | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, in either
    case, as curl and urllib read them), or None."""
    proxies = urllib.request.getproxies_environment()
    found = proxies.get(url.scheme)
    if not found or url.host is None:
        return None
    if urllib.request.proxy_bypass_environment(url.host, proxies):  # type: ignore[attr-defined]
        return None
    return _proxy_url(found, f"the {url.scheme.upper()}_PROXY variable")


@attrs.frozen
class Network:
    """The client's network options: see `Client(proxy=, trust_env=, ssl=, session=)`."""

    proxy: yarl.URL | None = attrs.field(default=None, repr=_hide_userinfo)
    """Every request goes through this proxy (CONNECT for https targets)."""
    trust_env: bool = False
    """Without `proxy`, take the proxy from HTTP_PROXY/HTTPS_PROXY/NO_PROXY, per request."""
    context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    """The caller's own SSLContext, for the relay and downloads alike."""
    cafile: str | None = None
    """A CA bundle trusted besides the system's certificates."""
    session: aiohttp.ClientSession | None = attrs.field(default=None, eq=False, repr=False)
    """The caller's session for relay requests: used, never closed."""
    allow_insecure_http: bool = False

    @classmethod
    def configure(
        cls,
        *,
        proxy: str | yarl.URL | None = None,
        trust_env: bool = False,
        ssl: ssl.SSLContext | str | os.PathLike[str] | None = None,
        session: aiohttp.ClientSession | None = None,
        allow_insecure_http: bool = False,
    ) -> Network:
        """The options as given to `Client`, checked: a ConfigurationError says what is wrong."""
        context, cafile = _trust(ssl)
        if session is not None:
            if not isinstance(session, aiohttp.ClientSession):
                raise ConfigurationError(
                    f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
                )
            if session.closed:
                raise ConfigurationError("the aiohttp session given as session= is closed")
            if session.auth is not None:
                raise ConfigurationError(
                    "the aiohttp session given as session= has a default auth=: the client "
                    "sends its own key, and aiohttp refuses both on one request"
                )
        return cls(
            proxy=None if proxy is None else _proxy_url(proxy, "proxy"),
            trust_env=bool(trust_env),
            context=context,
            cafile=cafile,
            session=session,
            allow_insecure_http=allow_insecure_http,
        )

    @property
    def key_in_session(self) -> bool:
        """Whether the key may sit in the relay session's default headers: only in a session of
        our own that no proxy is ever used by."""
        return self.session is None and self.proxy is None and not self.trust_env

    def proxy_for(self, url: yarl.URL) -> yarl.URL | None:
        """The proxy a request to `url` goes through, if any."""
        if self.proxy is not None:
            return self.proxy
        return env_proxy(url) if self.trust_env else None

    def check_relay(self, url: yarl.URL) -> None:
        """ConfigurationError if the key would reach a proxy in clear text: a plain-http relay
        reached through a proxy, without `allow_insecure_http`."""
        if url.scheme != "http" or self.allow_insecure_http:
            return
        proxy = self.proxy_for(url)
        if proxy is not None:
            raise ConfigurationError(
                f"the relay {str(url)!r} is plain http and would be reached through the proxy "
                f"{str(proxy.with_user(None))!r}, which would read the API key: use https, "
                "add the relay's host to NO_PROXY, or pass allow_insecure_http=True"
            )

    def options(self, url: yarl.URL) -> dict[str, Any]:
        """aiohttp's per-request options for `url`: its proxy and whom TLS trusts."""
        options: dict[str, Any] = {}
        proxy = self.proxy_for(url)
        if proxy is not None:
            options["proxy"] = proxy
        if self.context is not None:
            options["ssl"] = self.context
        elif self.cafile is not None:
            options["ssl"] = _bundle_context(self.cafile)
        return options

    def portable(self) -> Network:
        """These options without what cannot leave the process (the caller's session and
        SSLContext): what a pickled result downloads with."""
        return attrs.evolve(self, context=None, session=None)


def _trust(
    value: ssl.SSLContext | str | os.PathLike[str] | None,
) -> tuple[ssl.SSLContext | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, ssl.SSLContext):
        return value, None
    if not isinstance(value, (str, os.PathLike)):  # ssl=False among others
        raise ConfigurationError(
            "ssl must be an ssl.SSLContext or the path of a CA bundle (PEM), "
            f"not {value!r}: certificate checks cannot be turned off here"
        )
    cafile = os.fspath(value)
    try:
        _bundle_context(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot read the CA bundle {cafile!r}: {exc}") from exc
    return None, cafile
