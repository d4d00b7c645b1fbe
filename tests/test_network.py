"""Networks as deployments have them (`_network`): `proxy=` (a real local proxy that records
every byte it is sent), `trust_env=True` (HTTP(S)_PROXY, NO_PROXY), `ssl=` (a self-signed TLS
relay, trusted by an SSLContext or a CA bundle path) and `session=` (a caller's aiohttp session).
The key reaches an https relay only inside the CONNECT tunnel, and never reaches an image host.
"""

import pickle
import ssl

import aiohttp
import pytest
import trustme

import gemimg_async as gi
from gemimg_async._network import Network
from gemimg_async.testing import FakeClock, FakeRelay, Fault
from helpers import SECRET
from proxy_server import HTTPProxy

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def trusting(ca) -> ssl.SSLContext:
    """A client context that trusts the test CA (and nothing else)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def bundle(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_relay(ca):
    """A relay speaking https with a certificate for 127.0.0.1 from the test CA."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    async with FakeRelay(api_keys=SECRET, ssl=server) as relay:
        yield relay


@pytest.fixture
async def plain_relay():
    async with FakeRelay(api_keys=SECRET) as relay:
        yield relay


@pytest.fixture
async def proxy():
    async with HTTPProxy() as proxy:
        yield proxy


@pytest.fixture
def no_env_proxies(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def client(relay, **options) -> gi.Client:
    return gi.Client(SECRET, relay.url, clock=FakeClock(), **options)


def host_port(relay) -> str:
    return relay.url.removeprefix("https://").removeprefix("http://")


async def both_formats(client_: gi.Client, tmp_path) -> None:
    """A b64_json image in memory and a URL image downloaded: relay and image host alike."""
    async with client_:
        inline = await client_.generate("a fox", response_format="b64_json")
        linked = await client_.generate("a fox", save_to=tmp_path)
    assert inline.images[0].data.startswith(b"\x89PNG")
    assert linked.images[0].path.exists()


# --- ssl= --------------------------------------------------------------------------------------


async def test_an_ssl_context_trusts_a_private_ca(tls_relay, trusting, tmp_path):
    """With ssl=SSLContext, an https relay with a private CA's certificate answers, and its
    image URLs (https too) download."""
    await both_formats(client(tls_relay, ssl=trusting), tmp_path)
    assert [r.authorized for r in tls_relay.requests] == [True, True]
    assert tls_relay.download_count == 1


@pytest.mark.parametrize("as_type", [str, lambda path: path], ids=["str", "Path"])
async def test_a_ca_bundle_path_is_trusted(tls_relay, bundle, tmp_path, as_type):
    """ssl= a CA bundle's path (str or Path) trusts it, for the relay and downloads alike."""
    await both_formats(client(tls_relay, ssl=as_type(bundle)), tmp_path)
    assert tls_relay.generation_count == 2


async def test_an_untrusted_certificate_is_a_connect_error(tls_relay):
    """Without the CA, the TLS handshake fails: a ConnectError (never sent, never billed)."""
    async with client(tls_relay) as untrusting:
        with pytest.raises(gi.ConnectError, match="certificate"):
            await untrusting.generate("a fox")
    assert tls_relay.generation_count == 0


@pytest.mark.parametrize("value", [False, True, 3, b"ca.pem"])
def test_ssl_takes_a_context_or_a_bundle_only(value):
    """ssl= anything but an SSLContext or a path is a ConfigurationError: checks stay on."""
    with pytest.raises(gi.ConfigurationError, match="SSLContext"):
        gi.Client(SECRET, "https://relay.example", ssl=value)


def test_an_unreadable_bundle_is_a_configuration_error(tmp_path):
    """A missing file, or one that holds no certificate, is refused when the client is made."""
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", tmp_path / "empty.pem"):
        with pytest.raises(gi.ConfigurationError, match="CA bundle"):
            gi.Client(SECRET, "https://relay.example", ssl=path)


# --- proxy= ------------------------------------------------------------------------------------


async def test_through_a_proxy_the_key_reaches_an_https_relay_only_in_the_tunnel(
    tls_relay, trusting, proxy, tmp_path
):
    """proxy= sends relay requests and downloads through CONNECT tunnels: the proxy sees only
    CONNECT requests, and the key in nothing it was sent (nor as Proxy-Authorization)."""
    await both_formats(client(tls_relay, ssl=trusting, proxy=proxy.url), tmp_path)
    assert proxy.seen
    assert {(s.method, s.target) for s in proxy.seen} == {("CONNECT", host_port(tls_relay))}
    assert not proxy.saw(SECRET)
    assert all("proxy-authorization" not in s.headers for s in proxy.seen)
    assert [r.authorized for r in tls_relay.requests] == [True, True]


async def test_proxy_credentials_go_to_the_proxy_alone(tls_relay, trusting, proxy, tmp_path):
    """Credentials in the proxy URL become the CONNECT's Proxy-Authorization, never a header the
    relay sees, and the client's network options do not show the password."""
    address = proxy.url.replace("http://", "http://user:pa55word@")
    relay_client = client(tls_relay, ssl=trusting, proxy=address)
    assert "pa55word" not in repr(relay_client._engine.relay.network)
    await both_formats(relay_client, tmp_path)
    assert {s.headers.get("proxy-authorization") for s in proxy.seen} == {
        "Basic dXNlcjpwYTU1d29yZA=="
    }
    assert all("pa55word" not in str(r.headers) for r in tls_relay.requests)


async def test_a_plain_http_relay_through_a_proxy_is_refused(plain_relay, proxy):
    """A plain-http relay reached through a proxy would show the key to the proxy: refused
    when the client is made, before anything is sent."""
    with pytest.raises(gi.ConfigurationError, match="allow_insecure_http"):
        client(plain_relay, proxy=proxy.url)
    assert proxy.seen == []


async def test_downloads_never_carry_the_key_through_a_proxy(plain_relay, proxy, tmp_path):
    """With plain http allowed, the proxy forwards the relay's POST (which carries the key, as
    the caller accepted) and the image download, which carries neither key nor Authorization."""
    await both_formats(client(plain_relay, proxy=proxy.url, allow_insecure_http=True), tmp_path)
    posts = [s for s in proxy.seen if s.method == "POST"]
    gets = [s for s in proxy.seen if s.method == "GET"]
    assert len(posts) == 2
    assert len(gets) == 1
    assert gets[0].target.startswith(f"{plain_relay.url}/files/")
    assert "authorization" not in gets[0].headers
    assert SECRET.encode() not in gets[0].raw
    assert plain_relay.downloads[0].authorization is None


@pytest.mark.parametrize(
    "address", ["socks5://127.0.0.1:1080", "127.0.0.1:3128", "http://", "ftp://proxy"]
)
def test_a_proxy_that_is_not_an_http_url_is_refused(address):
    """proxy= must be an http:// or https:// URL with a host: a ConfigurationError otherwise."""
    with pytest.raises(gi.ConfigurationError, match="proxy URL"):
        gi.Client(SECRET, "https://relay.example", proxy=address)


# --- trust_env=True ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_env_proxies")
async def test_trust_env_takes_the_proxy_from_https_proxy(
    tls_relay, trusting, proxy, monkeypatch, tmp_path
):
    """trust_env=True with HTTPS_PROXY set tunnels through that proxy, the key inside."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    await both_formats(client(tls_relay, ssl=trusting, trust_env=True), tmp_path)
    assert {s.method for s in proxy.seen} == {"CONNECT"}
    assert not proxy.saw(SECRET)


@pytest.mark.usefixtures("no_env_proxies")
async def test_no_proxy_exempts_a_host(tls_relay, trusting, proxy, monkeypatch, tmp_path):
    """A host listed in NO_PROXY is reached directly, trust_env or not."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    await both_formats(client(tls_relay, ssl=trusting, trust_env=True), tmp_path)
    assert proxy.seen == []
    assert tls_relay.generation_count == 2


@pytest.mark.usefixtures("no_env_proxies")
async def test_the_environment_is_ignored_by_default(
    tls_relay, trusting, proxy, monkeypatch, tmp_path
):
    """Without trust_env=True, HTTPS_PROXY is not read (the proxy sees nothing)."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    await both_formats(client(tls_relay, ssl=trusting), tmp_path)
    assert proxy.seen == []


@pytest.mark.usefixtures("no_env_proxies")
async def test_trust_env_refuses_a_plain_http_relay_through_http_proxy(
    plain_relay, proxy, monkeypatch
):
    """HTTP_PROXY would read the key on its way to a plain-http relay: refused when the client
    is made; NO_PROXY for the relay's host lifts it."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with pytest.raises(gi.ConfigurationError, match="NO_PROXY"):
        client(plain_relay, trust_env=True)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with client(plain_relay, trust_env=True) as direct:
        await direct.generate("a fox")
    assert proxy.seen == []


# --- session= ----------------------------------------------------------------------------------


async def test_a_callers_session_carries_relay_requests_and_stays_open(plain_relay, tmp_path):
    """session= sends relay requests through the caller's session (its headers with them) and
    the key per request; aclose() leaves that session open for its owner."""
    async with aiohttp.ClientSession(headers={"X-App": "my-backend"}) as session:
        await both_formats(client(plain_relay, session=session), tmp_path)
        assert not session.closed
        async with session.get(f"{plain_relay.url}/files/nothing.png") as still_usable:
            assert still_usable.status == 404
    assert [r.authorized for r in plain_relay.requests] == [True, True]
    assert {r.headers.get("x-app") for r in plain_relay.requests} == {"my-backend"}


async def test_downloads_never_use_the_callers_session(plain_relay, tmp_path):
    """Image downloads go through the client's own key-less session: neither the key nor the
    caller's session headers (which may hold its own secrets) reach an image host."""
    headers = {"X-Internal-Token": "tok-123"}
    async with aiohttp.ClientSession(headers=headers) as session:
        await both_formats(client(plain_relay, session=session), tmp_path)
    [download] = plain_relay.downloads
    assert download.authorization is None
    assert "x-internal-token" not in download.headers


async def test_a_callers_session_through_a_proxy_keeps_the_key_in_the_tunnel(
    tls_relay, trusting, proxy, tmp_path
):
    """session= with proxy= and ssl=: the options apply per request; the proxy sees CONNECT
    only and never the key."""
    async with aiohttp.ClientSession() as session:
        await both_formats(
            client(tls_relay, session=session, ssl=trusting, proxy=proxy.url), tmp_path
        )
    assert {s.method for s in proxy.seen} == {"CONNECT"}
    assert not proxy.saw(SECRET)


async def test_a_callers_session_that_raises_for_status_still_gives_our_errors(plain_relay):
    """A session made with raise_for_status=True does not turn the relay's 400 into aiohttp's
    error: it is still a BadRequestError."""
    plain_relay.script(Fault.status(400, message="bad size"))
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        client(plain_relay, session=session) as relay_client,
    ):
        with pytest.raises(gi.BadRequestError, match="bad size"):
            await relay_client.generate("a fox")


async def test_a_session_closed_by_its_owner_is_a_client_closed_error(plain_relay):
    """A call after the caller closed its session raises ClientClosedError, sending nothing."""
    session = aiohttp.ClientSession()
    relay_client = client(plain_relay, session=session)
    await session.close()
    with pytest.raises(gi.ClientClosedError, match="session"):
        await relay_client.generate("a fox")
    await relay_client.aclose()
    assert plain_relay.generation_count == 0


async def test_sessions_that_cannot_work_are_refused():
    """A closed session, one with a default auth= (aiohttp refuses it beside our key) or
    anything but a ClientSession is a ConfigurationError when the client is made."""
    closed = aiohttp.ClientSession()
    await closed.close()
    async with aiohttp.ClientSession(headers={"Authorization": "Basic eDp5"}) as with_header:
        gi.Client(SECRET, "https://relay.example", session=with_header)  # ours replaces it
    for session, match in [(closed, "closed"), (object(), "ClientSession")]:
        with pytest.raises(gi.ConfigurationError, match=match):
            gi.Client(SECRET, "https://relay.example", session=session)
    with pytest.warns(DeprecationWarning, match="auth"):
        with_auth = aiohttp.ClientSession(auth=aiohttp.BasicAuth("x", "y"))
    async with with_auth:
        with pytest.raises(gi.ConfigurationError, match="auth"):
            gi.Client(SECRET, "https://relay.example", session=with_auth)


# --- results made through a proxy ----------------------------------------------------------------


async def test_a_pickled_result_downloads_through_the_same_proxy_and_bundle(
    tls_relay, bundle, proxy, tmp_path
):
    """A URL result, pickled and saved after its client is closed, downloads through the
    client's proxy with its CA bundle (a caller's SSLContext and session are not pickled)."""
    async with client(tls_relay, ssl=bundle, proxy=proxy.url) as relay_client:
        result = await relay_client.generate("a fox")
    copy = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own bytes, the behaviour under test
    before = len(proxy.seen)
    saved = await copy.save(tmp_path)
    assert saved.images[0].path.exists()
    assert len(proxy.seen) == before + 1
    assert not proxy.saw(SECRET)


def test_the_key_stays_in_the_session_only_when_no_proxy_can_be_used():
    """The key sits in the relay session's default headers only in a session of the client's
    own with no proxy and no trust_env: aiohttp copies default headers onto CONNECT requests."""
    assert Network().key_in_session
    assert not Network.configure(proxy="http://proxy:3128").key_in_session
    assert not Network.configure(trust_env=True).key_in_session
