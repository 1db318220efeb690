"""Egress: URL-taking actions never reach link-local or cloud metadata addresses, and obey
PLAYBOOK_BOT_HTTP_ALLOW, however the address is spelled or reached (DNS, redirects).

Attacks go through the real actions and activities against real local HTTP servers. The test's
network (`Network`) connects to loopback only and records every address a connection was asked
for, so "nothing reached it" is counted, and no test ever sends a byte to a real metadata service.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterable, Iterator

import httpcore
import httpx
import pytest
from structlog.testing import capture_logs
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.actions.activities import build_activities
from bot.actions.alertmanager import AlertmanagerActions
from bot.actions.base import EGRESS_REFUSED, ActionInput, ActionResult
from bot.actions.egress import EgressClient, EgressRules, announce_egress, egress_rules, system_resolver
from bot.actions.http import HttpActions
from bot.actions.prometheus import PrometheusActions
from bot.actions.secrets import SecretStore
from bot.engine.worker import worker_deps
from bot.services import run_dev, run_serve
from bot.worker_service import run_worker_only
from bot.settings import ConfigError, Settings
from tests.http_server import serving

ROOT = Path(__file__).resolve().parents[2]
METADATA_URL = "http://169.254.169.254/latest/meta-data/"
NEVER = "a link-local / cloud metadata address: never reachable from playbooks"
LOOPBACK = frozenset({"127.0.0.1", "::1"})
HANG_GUARD = 60  # seconds; only an unfixed guard that lets a request through ever comes near it

# What the injected resolver answers instead of DNS; any other name goes to getaddrinfo.
NAMES = {
    "metadata.attacker.test": ["169.254.169.254"],
    "rebind.attacker.test": ["127.0.0.1", "169.254.169.254"],
    "deploy.internal": ["127.0.0.1"],
    "sneaky.internal": ["169.254.169.254"],
    "deploy.evil": ["127.0.0.1"],
    "api.test": ["127.0.0.1"],
}


class Network(httpcore.AsyncNetworkBackend):
    """The tests' network: loopback only; every address a connection is asked for is recorded."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.looked_up: list[str] = []
        self._real = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        self.looked_up.append(host)
        return NAMES[host] if host in NAMES else await system_resolver(host, port)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        self.asked.append(host)
        if host not in LOOPBACK:
            raise httpcore.ConnectError(f"test network: {host} is off limits")
        return await self._real.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("test network: no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)

    def reached_beyond_loopback(self) -> list[str]:
        return [host for host in self.asked if host not in LOOPBACK]


@pytest.fixture
def network() -> Network:
    return Network()


def client(network: Network, *allow: str) -> EgressClient:
    return EgressClient(EgressRules.parse(allow), resolver=network.resolve, connector=network)


async def run(name: str, params: dict[str, Any], providers: list[object]) -> ActionResult:
    [activity] = [a for a in build_activities(providers, SecretStore(environ={})) if a.__name__ == name.replace(".", "_")]
    arg = ActionInput(run_id="run-1", step_id="s", playbook="p", action=name, params=params, idempotency_key="run-1/s")
    async with asyncio.timeout(HANG_GUARD):
        return await ActivityEnvironment().run(activity, arg)


async def refused(name: str, params: dict[str, Any], providers: list[object]) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run(name, params, providers)
    error = caught.value
    assert error.type == EGRESS_REFUSED, error.message
    assert error.non_retryable
    return error


class Site(BaseHTTPRequestHandler):
    """A local server: /redirect/<n> answers 302 to the nth entry of `targets`; the rest answer 200."""

    hits: list[str] = []
    targets: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", type(self).targets[int(self.path.rsplit("/", 1)[1])])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def site() -> Iterator[tuple[str, type[Site]]]:
    handler = type("SiteHandler", (Site,), {"hits": [], "targets": [METADATA_URL, "http://metadata.attacker.test/x"]})
    with serving(handler) as url:
        yield url, handler


# -- the metadata address, however it is spelled -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (METADATA_URL, f"169.254.169.254 is {NEVER}"),
        ("http://169.254.10.20:8080/", f"169.254.10.20 is {NEVER}"),  # link-local, not a known metadata IP
        ("http://[fe80::1]/", f"fe80::1 is {NEVER}"),
        ("http://[::ffff:169.254.169.254]/latest/", f"::ffff:a9fe:a9fe (169.254.169.254) is {NEVER}"),
        ("http://[::169.254.169.254]/", f"::a9fe:a9fe (169.254.169.254) is {NEVER}"),  # IPv4-compatible
        ("http://[64:ff9b::a9fe:a9fe]/", f"64:ff9b::a9fe:a9fe (169.254.169.254) is {NEVER}"),  # NAT64
        ("http://[fd00:ec2::254]/", f"fd00:ec2::254 is {NEVER}"),
        ("http://100.100.100.200/latest/meta-data/", f"100.100.100.200 is {NEVER}"),
        ("http://168.63.129.16/machine?comp=goalstate", f"168.63.129.16 is {NEVER}"),
        ("http://2852039166/latest/", f"2852039166 resolves to 169.254.169.254, {NEVER}"),  # decimal
        ("http://0xa9fea9fe/latest/", f"0xa9fea9fe resolves to 169.254.169.254, {NEVER}"),  # hex
        ("http://metadata.attacker.test/latest/", f"metadata.attacker.test resolves to 169.254.169.254, {NEVER}"),
        ("http://rebind.attacker.test/", f"rebind.attacker.test resolves to 169.254.169.254, {NEVER}"),
        ("http://metadata.google.internal./computeMetadata/v1/", "metadata.google.internal is a cloud metadata host"),
    ],
)
async def test_http_request_never_reaches_metadata(network: Network, url: str, says: str) -> None:
    error = await refused("http.request", {"url": url, "timeout": "10s"}, [HttpActions(client(network))])

    assert says in error.message
    assert error.message.startswith("http.request: GET http")
    assert network.asked == []  # refused before any connection was opened


async def test_the_check_holds_with_an_allowlist_that_admits_everything(network: Network) -> None:
    http = client(network, "0.0.0.0/0", "::/0", "*.test")
    for url in (METADATA_URL, "http://[::ffff:169.254.169.254]/", "http://metadata.attacker.test/", "http://2852039166/"):
        error = await refused("http.request", {"url": url, "timeout": "10s"}, [HttpActions(http)])
        assert NEVER in error.message
    assert network.asked == []


async def test_a_redirect_to_metadata_is_refused_and_nothing_reaches_it(network: Network, site) -> None:
    url, handler = site
    for hop in (0, 1):  # a literal metadata IP, then a name that resolves to it
        error = await refused(
            "http.request", {"url": f"{url}/redirect/{hop}", "follow_redirects": True, "timeout": "10s"},
            [HttpActions(client(network))],
        )
        assert NEVER in error.message
    assert handler.hits == ["/redirect/0", "/redirect/1"]  # the allowed first hops did happen
    assert network.reached_beyond_loopback() == []


async def test_error_text_leaves_out_query_strings_and_credentials(network: Network) -> None:
    error = await refused(
        "http.request", {"url": "http://user:pw@169.254.169.254/x?token=s3cret", "timeout": "10s"},
        [HttpActions(client(network))],
    )
    assert "s3cret" not in error.message and "pw" not in error.message
    assert "http.request: GET http://169.254.169.254/x: egress refused: 169.254.169.254 is" in error.message


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


async def test_tls_verifies_the_url_hostname_though_the_checked_ip_is_dialled(
    network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl not on PATH: this test makes its certificates with it")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(tmp_path, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    (tmp_path / "leaf.ext").write_text("subjectAltName = DNS:deploy.internal\nextendedKeyUsage = serverAuth\n")
    _openssl(tmp_path, "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=deploy.internal")
    _openssl(tmp_path, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", "leaf.pem", "-extfile", "leaf.ext")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the client trusts the test CA (and only it)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")

    handler = type("TlsSite", (Site,), {"hits": [], "targets": []})
    with serving(handler, tls) as url:
        port = httpx.URL(url).port
        http = HttpActions(client(network))
        ok = await run("http.request", {"url": f"https://deploy.internal:{port}/ok"}, [http])
        assert ok.output["json"] == {"ok": True}
        with pytest.raises(ApplicationError) as caught:  # same IP, a name the certificate does not hold
            await run("http.request", {"url": f"https://api.test:{port}/ok", "timeout": "10s"}, [http])
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message and "api.test" in caught.value.message
    assert handler.hits == ["/ok"]
    assert network.asked == ["127.0.0.1", "127.0.0.1"]


# -- the allowlist -------------------------------------------------------------------------------


async def test_allowlist_refuses_other_hosts_before_looking_them_up(network: Network, site) -> None:
    url, handler = site
    port = httpx.URL(url).port
    http = client(network, "deploy.internal", "*.svc.cluster.local")
    error = await refused("http.request", {"url": f"http://deploy.evil:{port}/"}, [HttpActions(http)])

    assert "deploy.evil is not in PLAYBOOK_BOT_HTTP_ALLOW (deploy.internal, *.svc.cluster.local)" in error.message
    assert "add the host" in error.message
    assert network.looked_up == [] and network.asked == [] and handler.hits == []

    ok = await run("http.request", {"url": f"http://deploy.internal:{port}/ok"}, [HttpActions(http)])
    assert ok.output["json"] == {"ok": True}
    assert handler.hits == ["/ok"]


async def test_allowlist_admits_by_cidr_and_refuses_outside_it(network: Network, site) -> None:
    url, handler = site
    port = httpx.URL(url).port
    narrow = client(network, "10.0.0.0/8")
    error = await refused("http.request", {"url": f"http://api.test:{port}/"}, [HttpActions(narrow)])
    assert "api.test (127.0.0.1) is not in PLAYBOOK_BOT_HTTP_ALLOW (10.0.0.0/8)" in error.message
    error = await refused("http.request", {"url": f"http://127.0.0.1:{port}/"}, [HttpActions(narrow)])
    assert "127.0.0.1 is not in PLAYBOOK_BOT_HTTP_ALLOW (10.0.0.0/8)" in error.message
    assert handler.hits == []

    wide = client(network, "10.0.0.0/8", "127.0.0.0/8")
    for target in (f"http://api.test:{port}/by-name", f"http://127.0.0.1:{port}/by-ip"):
        result = await run("http.request", {"url": target}, [HttpActions(wide)])
        assert result.output["status"] == 200
    assert handler.hits == ["/by-name", "/by-ip"]


async def test_an_allowed_pattern_never_admits_a_metadata_address(network: Network) -> None:
    error = await refused("http.request", {"url": "http://sneaky.internal/"}, [HttpActions(client(network, "*.internal"))])
    assert f"sneaky.internal resolves to 169.254.169.254, {NEVER}" in error.message
    assert network.asked == []


def test_allowlist_entries_are_checked() -> None:
    rules = EgressRules.parse(["Deploy.Internal.", " *.internal ", "10.0.0.0/8", "192.0.2.7", "fd00::/8", ""])
    assert rules.entries == ("Deploy.Internal.", "*.internal", "10.0.0.0/8", "192.0.2.7", "fd00::/8")
    assert rules.admits_name("deploy.internal") and rules.admits_name("a.b.internal")
    assert not rules.admits_name("internal") and not rules.admits_name("deploy.internal.evil")
    for bad, says in [
        ("https://deploy.internal", "not a host"),
        ("deploy.internal:443", "not a host"),
        ("de*ploy.internal", "only a leading '*.'"),
        ("*", "only a leading '*.'"),
        ("10.0.0.1/8", "not a CIDR"),
        ("169.254.169.254", "never reachable"),
        ("169.254.0.0/16", "never reachable"),
        ("metadata.google.internal", "cloud metadata host"),
    ]:
        with pytest.raises(ValueError, match="PLAYBOOK_BOT_HTTP_ALLOW") as caught:
            EgressRules.parse([bad])
        assert says in str(caught.value), (bad, str(caught.value))
    with pytest.raises(ConfigError, match="PLAYBOOK_BOT_HTTP_ALLOW: 'https://x' is not a host"):
        egress_rules(Settings(http_allow="https://x"))


def test_the_setting_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_HTTP_ALLOW", "deploy.internal, *.internal,10.0.0.0/8")
    assert Settings().http_allow == ["deploy.internal", "*.internal", "10.0.0.0/8"]
    assert egress_rules(Settings()).restricted


# -- alertmanager.* and prometheus.query --------------------------------------------------------


async def test_alertmanager_actions_never_reach_metadata(network: Network) -> None:
    http = client(network)
    silence = {"matchers": ['service="api"'], "duration": "5m"}
    for url in (METADATA_URL, "http://[::ffff:169.254.169.254]/", "http://metadata.attacker.test/"):
        error = await refused("alertmanager.silence", {**silence, "url": url}, [AlertmanagerActions(http)])
        assert error.message.startswith("alertmanager.silence: GET ") and NEVER in error.message
    error = await refused("alertmanager.expire_silence", {"silence_id": "abc"}, [AlertmanagerActions(http, METADATA_URL)])
    assert error.message.startswith("alertmanager.expire_silence: DELETE ") and NEVER in error.message
    assert network.asked == []


async def test_prometheus_query_refuses_at_once_instead_of_polling(network: Network) -> None:
    http = client(network)
    for provider in (PrometheusActions(http), PrometheusActions(http, default_url="http://2852039166")):
        params = {"query": "up", "expect": "> 0", "interval": "100ms"}
        if provider._default_url is None:
            params["url"] = METADATA_URL
        error = await refused("prometheus.query", params, [provider])
        assert error.message.startswith("prometheus.query: GET ") and NEVER in error.message
    assert network.asked == []


class FakeApis(BaseHTTPRequestHandler):
    """Just enough Alertmanager and Prometheus for the positive controls."""

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/query"):
            self._json({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}})
        else:
            self._json([])

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json({"silenceID": "s-1"})


async def test_allowed_requests_still_work(network: Network, site) -> None:
    url, handler = site
    with serving(FakeApis) as apis:
        http = client(network, "127.0.0.1", "api.test")
        api = f"http://api.test:{httpx.URL(apis).port}"
        result = await run("http.request", {"url": f"{url}/ok", "query": {"a": "1"}}, [HttpActions(http)])
        assert result.output["json"] == {"ok": True}
        silenced = await run(
            "alertmanager.silence", {"matchers": ['service="api"'], "duration": "5m", "url": api}, [AlertmanagerActions(http)]
        )
        assert silenced.output["silence_id"] == "s-1"
        queried = await run("prometheus.query", {"query": "up", "expect": "> 0"}, [PrometheusActions(http, apis)])
        assert queried.output["value"] == 1.0
    assert network.reached_beyond_loopback() == [] and "127.0.0.1" in network.asked


async def test_the_worker_wires_the_allowlist_and_an_injected_resolver(network: Network, tmp_path: Path, site) -> None:
    url, handler = site
    port = httpx.URL(url).port
    settings = Settings(data_dir=tmp_path, policies_dir=ROOT / "policies", http_allow="deploy.internal")
    async with worker_deps(settings, resolver=network.resolve) as deps:
        [activity] = [a for a in deps.activities if a.__name__ == "http_request"]

        async def call(target: str) -> ActionResult:
            arg = ActionInput(run_id="r", step_id="s", playbook="p", action="http.request",
                              params={"url": target}, idempotency_key="r/s")
            return await ActivityEnvironment().run(activity, arg)

        assert (await call(f"http://deploy.internal:{port}/ok")).output["status"] == 200
        with pytest.raises(ApplicationError) as caught:
            await call(f"http://127.0.0.1:{port}/nope")
        assert caught.value.type == EGRESS_REFUSED
        assert "127.0.0.1 is not in PLAYBOOK_BOT_HTTP_ALLOW (deploy.internal)" in caught.value.message
    assert handler.hits == ["/ok"]
    assert "deploy.internal" in network.looked_up  # the injected resolver answered, not DNS


def test_url_actions_refuse_a_plain_httpx_client() -> None:
    plain = httpx.AsyncClient()
    for build in (HttpActions, AlertmanagerActions, PrometheusActions):
        with pytest.raises(TypeError, match="EgressClient"):
            build(plain)


# -- what the services say at start ----------------------------------------------------------


WARNING = "PLAYBOOK_BOT_HTTP_ALLOW is not set"


def test_unset_allowlist_is_announced_and_a_set_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with capture_logs() as logs:
        announce_egress(Settings())
    [entry] = logs
    assert entry["log_level"] == "warning" and entry["event"].startswith(WARNING)
    assert "link-local and cloud metadata" in entry["event"]

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    with capture_logs() as logs:
        announce_egress(Settings(http_allow="deploy.internal"))
    assert [e["event"] for e in logs] == [
        "HTTPS_PROXY set: playbook HTTP ignores it and connects directly, so the egress rules see the address "
        "actually reached"
    ]


async def _stops_early(service: Any, settings: Settings) -> list[dict[str, Any]]:
    """Start a service with settings that stop it right after its start-up checks; its log."""
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        try:
            with pytest.raises(Exception) as caught:
                await service(settings)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # run_worker_only installs them on this loop
                loop.remove_signal_handler(sig)
    assert type(caught.value).__name__ in ("ConfigError", "PolicyLoadError"), repr(caught.value)
    return logs


async def test_serve_worker_and_dev_warn_when_the_allowlist_is_unset(tmp_path: Path) -> None:
    cases = [
        (run_serve, Settings(data_dir=tmp_path, alertmanager_token=None)),  # refuses: no webhook token
        (run_worker_only, Settings(data_dir=tmp_path, policies_dir=tmp_path / "no-policies")),
        (run_dev, Settings(data_dir=tmp_path, temporal_tls=True)),  # refuses: TLS without an address
    ]
    for service, settings in cases:
        logs = await _stops_early(service, settings)
        assert any(e["event"].startswith(WARNING) for e in logs), (service.__name__, logs)
        quiet = await _stops_early(service, settings.model_copy(update={"http_allow": ["deploy.internal"]}))
        assert not any(e["event"].startswith(WARNING) for e in quiet), service.__name__


async def test_a_malformed_allowlist_stops_the_worker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, policies_dir=ROOT / "policies", http_allow="10.0.0.1/8")
    with pytest.raises(ConfigError, match="10.0.0.1/8"):
        async with worker_deps(settings):
            pass
