"""Where playbook HTTP may go: never to link-local or cloud metadata addresses, and, once
PLAYBOOK_BOT_HTTP_ALLOW is set, only to the hosts and networks it names.

The check lives in the connection itself (an httpcore network backend): the host is resolved
once, every address it resolves to is checked, and the socket connects to a checked address, so
a DNS answer that changes between check and connect (rebinding) cannot slip past, and every
redirect hop opens its own checked connection. TLS still verifies the URL's hostname.

Proxies from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) are not used for playbook
traffic: a proxy resolves and connects on its own, out of this check's sight.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Awaitable, Callable, Iterable, Sequence

import httpcore
import httpx
import structlog

from bot.actions.base import EgressRefused
from bot.settings import ConfigError, Settings

log = structlog.get_logger("bot.actions.egress")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the addresses it resolves to, as text; tests inject one instead of DNS."""

ALLOW_SETTING = "PLAYBOOK_BOT_HTTP_ALLOW"
NEVER = "a link-local / cloud metadata address: never reachable from playbooks"
LINK_LOCAL = (ip_network("169.254.0.0/16"), ip_network("fe80::/10"))
METADATA_ADDRESSES = frozenset(
    ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle (link-local anyway)
        "169.254.170.2",  # AWS ECS task metadata and credentials (link-local anyway)
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS, over IPv6
        "fd20:ce::254",  # GCP, over IPv6
    )
)
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
NAT64 = ip_network("64:ff9b::/96")  # a NAT64 gateway turns these into the IPv4 address they embed
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _embedded_v4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _v4_view(ip: IPAddress) -> IPAddress:
    return (_embedded_v4(ip) or ip) if isinstance(ip, IPv6Address) else ip


def never_reachable(ip: IPAddress) -> bool:
    """Link-local or a cloud metadata address, however it is spelled."""
    return any(
        candidate in METADATA_ADDRESSES or any(candidate in net for net in LINK_LOCAL)
        for candidate in {ip, _v4_view(ip)}
    )


def _parse_ip(text: str) -> IPAddress | None:
    """An IP literal as a URL or resolver gives it ([::1], fe80::1%eth0), scope dropped; else None."""
    text = text.strip("[]").split("%", 1)[0]
    try:
        return ip_address(text)
    except ValueError:
        return None


def _shown(ip: IPAddress) -> str:
    embedded = _v4_view(ip)
    return f"{ip} ({embedded})" if embedded != ip else str(ip)


def shown_url(url: str | httpx.URL) -> str:
    """A URL fit for an error message: no credentials, no query string (either may hold a token)."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


@dataclass(frozen=True)
class EgressRules:
    """PLAYBOOK_BOT_HTTP_ALLOW, parsed: exact hosts, `*.domain` patterns and networks."""

    entries: tuple[str, ...] = ()
    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".internal" for "*.internal"
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressRules:
        """The rules, or ValueError naming the entry that is wrong and how to write it."""
        written: list[str] = []
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            written.append(entry)
            if "://" in entry or (":" in entry and _parse_ip(entry) is None and "/" not in entry):
                raise ValueError(f"{ALLOW_SETTING}: {entry!r} is not a host: give a name like deploy.internal, "
                                 "a pattern like *.internal or a CIDR like 10.0.0.0/8 (no scheme, no port)")
            if "/" in entry or _parse_ip(entry) is not None:
                network = _network(entry)
                if any(network.subnet_of(net) for net in LINK_LOCAL if net.version == network.version) or (
                    network.num_addresses == 1 and never_reachable(network.network_address)
                ):
                    raise ValueError(f"{ALLOW_SETTING}: {entry} is {NEVER}, whatever the allowlist says; remove it")
                networks.append(network)
                continue
            name = entry.lower().rstrip(".")
            wildcard = name.startswith("*.")
            bare = name[2:] if wildcard else name
            if not _hostname(bare):
                raise ValueError(f"{ALLOW_SETTING}: {entry!r} is not a host name or pattern: only a leading "
                                 "'*.' is a wildcard (*.internal), and labels are letters, digits and '-'")
            if bare in METADATA_NAMES:
                raise ValueError(f"{ALLOW_SETTING}: {entry} is a cloud metadata host: never reachable from "
                                 "playbooks; remove it")
            if wildcard:
                suffixes.append("." + bare)
            else:
                hosts.add(bare)
        return cls(tuple(written), frozenset(hosts), tuple(suffixes), tuple(networks))

    @property
    def restricted(self) -> bool:
        return bool(self.entries)

    def admits_name(self, name: str) -> bool:
        return name in self.hosts or any(name.endswith(suffix) for suffix in self.suffixes)

    def admits_address(self, ip: IPAddress) -> bool:
        return any(candidate in net for net in self.networks for candidate in {ip, _v4_view(ip)})

    def not_admitted(self, what: str) -> str:
        return (f"{what} is not in {ALLOW_SETTING} ({', '.join(self.entries)}): add the host, a *.domain "
                "pattern or a CIDR holding its address there if playbooks may call it")


def _network(entry: str) -> IPNetwork:
    try:
        return ip_network(entry.strip("[]"), strict=True)
    except ValueError as exc:
        raise ValueError(f"{ALLOW_SETTING}: {entry!r} is not a CIDR like 10.0.0.0/8: {exc}") from None


def _hostname(name: str) -> bool:
    labels = name.split(".")
    return bool(name) and len(name) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    )


def egress_rules(settings: Settings) -> EgressRules:
    """The rules the settings ask for; a malformed allowlist stops the process with ConfigError."""
    try:
        return EgressRules.parse(settings.http_allow)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def announce_egress(settings: Settings) -> EgressRules:
    """At service start: refuse a malformed allowlist, and say when playbooks may call anything."""
    rules = egress_rules(settings)
    if not rules.restricted:
        log.warning(
            f"{ALLOW_SETTING} is not set: playbook HTTP (http.request, alertmanager.*, prometheus.query) may "
            "reach any host except link-local and cloud metadata addresses; set it to the hosts and CIDRs "
            "playbooks may call (e.g. deploy.internal,*.svc.cluster.local,10.0.0.0/8)"
        )
    proxies = sorted({name.upper() for name in PROXY_VARIABLES if os.environ.get(name)})
    if proxies:
        log.warning(f"{', '.join(proxies)} set: playbook HTTP ignores it and connects directly, so the "
                    "egress rules see the address actually reached")
    return rules


async def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo, as a socket connect would use it (so 2852039166 and 0xa9fea9fe resolve too)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects the checked address with `connector`."""

    def __init__(
        self,
        rules: EgressRules,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.rules = rules
        self._resolve = resolver or system_resolver
        self._connector = connector or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.admit(host, port, timeout)
        failure: Exception | None = None
        for ip in addresses:  # what getaddrinfo prefers first; the next when one does not answer
            try:
                return await self._connector.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are never reachable from playbooks")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)

    async def admit(self, host: str, port: int, timeout: float | None = None) -> list[IPAddress]:
        """The addresses this connection may use, or EgressRefused naming the rule."""
        name = host.lower().rstrip(".")
        literal = _parse_ip(name)
        if literal is not None:
            addresses, by_name = [literal], False
        else:
            if name in METADATA_NAMES:
                self._refuse(name, f"{name} is a cloud metadata host: never reachable from playbooks")
            by_name = self.rules.admits_name(name)
            if self.rules.restricted and not by_name and not self.rules.networks:
                self._refuse(name, self.rules.not_admitted(name))  # no CIDR could admit it: no lookup needed
            addresses = await self._lookup(name, port, timeout)
        for ip in addresses:
            if never_reachable(ip):
                what = _shown(ip) if literal is not None else f"{name} resolves to {_shown(ip)},"
                self._refuse(name, f"{what} is {NEVER}" if literal is not None else f"{what} {NEVER}")
        if self.rules.restricted and not by_name:
            outside = [str(ip) for ip in addresses if not self.rules.admits_address(ip)]
            if outside:
                what = name if literal is not None else f"{name} ({', '.join(outside)})"
                self._refuse(name, self.rules.not_admitted(what))
        return addresses

    async def _lookup(self, name: str, port: int, timeout: float | None) -> list[IPAddress]:
        try:
            async with asyncio.timeout(timeout):
                answers = await self._resolve(name, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {name} timed out") from None
        except OSError as exc:  # socket.gaierror: no such name, no DNS
            raise httpcore.ConnectError(f"cannot resolve {name}: {exc.strerror or exc}") from None
        addresses = [_parse_ip(answer) for answer in answers]
        if not addresses or None in addresses:
            raise httpcore.ConnectError(f"cannot resolve {name}: the resolver gave {list(answers)!r}")
        return [ip for ip in addresses if ip is not None]

    @staticmethod
    def _refuse(host: str, reason: str) -> None:
        log.warning("egress refused", host=host, reason=reason)
        raise EgressRefused(reason)


class EgressClient(httpx.AsyncClient):
    """The only HTTP client URL-taking actions accept: every connection it opens is checked."""

    def __init__(
        self,
        rules: EgressRules | None = None,
        *,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.rules = rules or EgressRules()
        backend = GuardedBackend(self.rules, resolver, connector)
        # trust_env=False: no proxies or .netrc from the environment (see the module docstring).
        super().__init__(transport=_guarded_transport(backend), trust_env=False)


def _guarded_transport(backend: GuardedBackend) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (request mapping, error mapping) over a pool that connects through `backend`.

    httpx has no public way to pass a network backend, so the pool is swapped; a future httpx that
    no longer has it fails here, at startup, instead of connecting unchecked.
    """
    transport = httpx.AsyncHTTPTransport()
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx keeps its connection pool elsewhere: the egress guard cannot be installed")
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)  # httpx's defaults
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=True),  # SSL_CERT_FILE / SSL_CERT_DIR still count
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport


def guarded(client: httpx.AsyncClient, who: str) -> EgressClient:
    """`client`, if it checks egress; an action handed a plain httpx client refuses to be built."""
    if not isinstance(client, EgressClient):
        raise TypeError(f"{who} needs a bot.actions.egress.EgressClient: a plain httpx client would reach any "
                        "address, cloud metadata included")
    return client
