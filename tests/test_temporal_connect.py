"""`connect` over real TLS: certificates made by `openssl` at test time, and a TLS-terminating proxy
(ALPN h2, optionally requiring a client certificate) in front of the session's Temporal dev server.

Nothing here mocks the SDK: every success is an RPC answered by Temporal through the proxy, and
every failure is the SDK's own handshake refusal or our ConfigError before any connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import pytest
from structlog.testing import capture_logs
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from bot.settings import ConfigError, Settings
from bot.temporal import TemporalUnavailable, connect, tls_config
from tests.e2e.support import base_env, cli

SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
"""
CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getitem__(self, name: str) -> Path:
        return self.dir / name


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def _leaf(pki: Path, name: str, cn: str, ext: str) -> None:
    (pki / f"{name}.ext").write_text(ext)
    _openssl(pki, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    _openssl(pki, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA; a server certificate for 127.0.0.1/localhost; one only for temporal.internal; a client one."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not on PATH: these tests make their certificates with it")
    root = tmp_path_factory.mktemp("pki")
    _openssl(root, "req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=playbook-bot test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _leaf(root, "server", "localhost", SERVER_EXT.format(san="DNS:localhost, IP:127.0.0.1"))
    _leaf(root, "named", "temporal.internal", SERVER_EXT.format(san="DNS:temporal.internal"))
    _leaf(root, "client", "playbook-bot", CLIENT_EXT)
    return Pki(root)


# ---- the TLS-terminating proxy ---------------------------------------------------------------


@dataclass
class TlsProxy:
    address: str
    connections: int = 0  # TLS handshakes that succeeded
    plaintext: bytearray = field(default_factory=bytearray)  # what clients sent, decrypted


@contextlib.asynccontextmanager
async def tls_proxy(
    upstream: str, pki: Pki, cert: str = "server", client_ca: Path | None = None
) -> AsyncIterator[TlsProxy]:
    """Terminate TLS (h2 by ALPN; with client_ca, mTLS required) and pipe bytes to `upstream`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}.key"])
    context.set_alpn_protocols(["h2"])
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    host, port = upstream.rsplit(":", 1)
    tasks: set[asyncio.Task] = set()
    proxy = TlsProxy(address="")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    proxy.plaintext += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy.connections += 1
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        except asyncio.CancelledError:  # teardown; asyncio's stream callback would log a cancelled handler
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    proxy.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def upstream(dev_env: WorkflowEnvironment) -> str:
    return dev_env.client.service_client.config.target_host


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PLAYBOOK_BOT_* from the shell, and an empty data dir (no recorded dev server)."""
    for key in list(os.environ):
        if key.startswith("PLAYBOOK_BOT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PLAYBOOK_BOT_DATA_DIR", str(tmp_path / "data"))


def settings(**values: object) -> Settings:
    return Settings(**{"temporal_connect_timeout": 10, **values})  # type: ignore[arg-type]


async def namespace_of(settings_: Settings) -> str:
    client = await connect(settings_)
    response = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    return response.namespace_info.name


# ---- real TLS ----------------------------------------------------------------------------------


async def test_the_ca_file_connects_over_tls_to_a_working_server(pki: Pki, upstream: str) -> None:
    async with tls_proxy(upstream, pki) as proxy:
        s = settings(temporal_address=proxy.address, temporal_tls_ca_file=pki["ca.pem"])
        assert await namespace_of(s) == "default"
        client = await connect(s)
        assert (await client.count_workflows()).count >= 0  # visibility answers too
    assert proxy.connections >= 1
    assert proxy.plaintext.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # gRPC went inside the TLS


async def test_plain_settings_still_speak_plain_grpc(upstream: str) -> None:
    s = settings(temporal_address=upstream)
    assert tls_config(s) is None
    assert await namespace_of(s) == "default"


async def test_without_the_ca_the_self_signed_server_is_refused_clearly(pki: Pki, upstream: str) -> None:
    async with tls_proxy(upstream, pki) as proxy:
        with pytest.raises(TemporalUnavailable) as refused:
            await connect(settings(temporal_address=proxy.address, temporal_tls=True))
    message = str(refused.value)
    assert message.startswith(f"cannot reach Temporal at {proxy.address} (TLS: system CAs"), message
    assert "no answer within" not in message  # refused by the handshake, not a hang
    assert "certificate" in message.lower() or "UnknownIssuer" in message, message


async def test_plain_grpc_to_a_tls_server_fails(pki: Pki, upstream: str) -> None:
    async with tls_proxy(upstream, pki) as proxy:
        with pytest.raises(TemporalUnavailable, match="cannot reach Temporal at 127.0.0.1"):
            await connect(settings(temporal_address=proxy.address, temporal_connect_timeout=3))
    assert proxy.connections == 0


async def test_the_server_name_is_what_the_certificate_is_checked_against(pki: Pki, upstream: str) -> None:
    async with tls_proxy(upstream, pki, cert="named") as proxy:  # certificate for temporal.internal only
        base = {"temporal_address": proxy.address, "temporal_tls_ca_file": pki["ca.pem"]}
        with pytest.raises(TemporalUnavailable) as refused:
            await connect(settings(**base))
        assert "no answer within" not in str(refused.value)
        assert await namespace_of(settings(**base, temporal_tls_server_name="temporal.internal")) == "default"


async def test_mtls_needs_the_client_certificate(pki: Pki, upstream: str) -> None:
    async with tls_proxy(upstream, pki, client_ca=pki["ca.pem"]) as proxy:
        base = {"temporal_address": proxy.address, "temporal_tls_ca_file": pki["ca.pem"]}
        with pytest.raises(TemporalUnavailable) as refused:
            await connect(settings(**base, temporal_connect_timeout=5))
        assert "no client certificate" in str(refused.value)
        assert proxy.connections == 0  # the handshake never completed
        mtls = settings(**base, temporal_tls_cert_file=pki["client.pem"], temporal_tls_key_file=pki["client.key"])
        assert await namespace_of(mtls) == "default"
        assert proxy.connections >= 1


# HPACK (RFC 7541 appendix B) gives these ten characters 5-bit Huffman codes. A key drawn from them
# is found in the decrypted HTTP/2 stream whether the client sends the header raw or Huffman-coded.
HUFFMAN5 = {ch: code for code, ch in enumerate("012aceiost")}


def _bits(data: bytes) -> str:
    return "".join(f"{byte:08b}" for byte in data)


def sent_on_the_wire(plaintext: bytes, value: str) -> bool:
    huffman = "".join(f"{HUFFMAN5[ch]:05b}" for ch in value)
    return value.encode() in plaintext or huffman in _bits(plaintext)


async def test_the_api_key_reaches_the_server_as_a_header_and_is_never_logged(pki: Pki, upstream: str) -> None:
    key = "".join(random.choices(sorted(HUFFMAN5), k=40))
    async with tls_proxy(upstream, pki, client_ca=pki["ca.pem"]) as proxy:
        s = settings(
            temporal_address=proxy.address,
            temporal_tls_ca_file=pki["ca.pem"],
            temporal_tls_cert_file=pki["client.pem"],
            temporal_tls_key_file=pki["client.key"],
            temporal_api_key=key,
        )
        with capture_logs() as logs:
            assert await namespace_of(s) == "default"
    assert sent_on_the_wire(bytes(proxy.plaintext), key), "the API key was not in any request header"
    private_key = pki["client.key"].read_text().splitlines()[1]
    logged = repr(logs) + repr(s) + str(s.model_dump())
    assert logs and any(entry["event"] == "temporal connected" for entry in logs)
    assert key not in logged and private_key not in logged
    assert "API key" in repr(logs)  # says that one is used, not what it is


# ---- bad configuration: one ConfigError naming the settings, before anything connects -------


@pytest.fixture
async def watched(pki: Pki, upstream: str) -> AsyncIterator[TlsProxy]:
    """A working TLS endpoint a bad configuration must never reach."""
    async with tls_proxy(upstream, pki) as proxy:
        yield proxy
    assert proxy.connections == 0


async def refused(**values: object) -> str:
    with pytest.raises(ConfigError) as error:
        await connect(settings(**values))
    return str(error.value)


async def test_a_client_certificate_without_its_key_or_a_key_without_its_certificate(
    pki: Pki, watched: TlsProxy
) -> None:
    message = await refused(temporal_address=watched.address, temporal_tls_cert_file=pki["client.pem"])
    assert "PLAYBOOK_BOT_TEMPORAL_TLS_CERT_FILE is set without PLAYBOOK_BOT_TEMPORAL_TLS_KEY_FILE" in message
    message = await refused(temporal_address=watched.address, temporal_tls_key_file=pki["client.key"])
    assert "PLAYBOOK_BOT_TEMPORAL_TLS_KEY_FILE is set without PLAYBOOK_BOT_TEMPORAL_TLS_CERT_FILE" in message
    assert "BEGIN" not in message


async def test_a_missing_file_names_the_setting_and_the_path(tmp_path: Path, watched: TlsProxy) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    message = await refused(temporal_address=watched.address, temporal_tls_ca_file=missing)
    assert f"PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE={missing} does not exist" in message


async def test_a_relative_path_is_shown_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watched: TlsProxy
) -> None:
    monkeypatch.chdir(tmp_path)
    message = await refused(temporal_address=watched.address, temporal_tls_ca_file=Path("certs/ca.pem"))
    assert f"PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE=certs/ca.pem ({tmp_path}/certs/ca.pem) does not exist" in message


async def test_a_directory_is_not_a_file(tmp_path: Path, watched: TlsProxy) -> None:
    message = await refused(temporal_address=watched.address, temporal_tls_ca_file=tmp_path)
    assert f"PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE={tmp_path} is a directory" in message


NOBODY = 65534


def unprivileged(check: Callable[[], str]) -> str:
    """`check()` in a forked child that is not root (tests run as root, who reads a file whatever
    its mode): as root it drops to nobody first. Forked, not exec'd: the interpreter and the
    modules are already loaded, wherever they live; the child only reads files and says what."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            answer = f"{os.geteuid()}:{check()}"
        except BaseException as exc:  # noqa: BLE001  reported to the parent
            answer = f"child failed: {type(exc).__name__}: {exc}"
        finally:
            try:
                os.write(write, answer.encode())
            finally:
                os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    uid, _, said = answer.partition(":")
    assert uid.isdigit() and int(uid) != 0, answer
    return said


def tls_problem(cert: Path, key: Path) -> str:
    try:
        tls_config(settings(temporal_address="127.0.0.1:7233", temporal_tls_cert_file=cert, temporal_tls_key_file=key))
    except ConfigError as exc:
        return str(exc)
    return "ok"


def test_an_unreadable_file_names_the_setting_and_the_path(pki: Pki) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        where.chmod(0o755)  # nobody may look in: only the key's own mode keeps it out
        cert, key = where / "client.pem", where / "client.key"
        cert.write_bytes(pki["client.pem"].read_bytes())
        key.write_bytes(pki["client.key"].read_bytes())
        cert.chmod(0o644)
        key.chmod(0)
        assert unprivileged(lambda: tls_problem(cert, key)) == (
            f"Temporal TLS: PLAYBOOK_BOT_TEMPORAL_TLS_KEY_FILE={key} cannot be read (Permission denied)"
        )
        key.chmod(0o644)  # positive control: the same child, the same paths, a key it may read
        assert unprivileged(lambda: tls_problem(cert, key)) == "ok"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
async def test_a_file_that_fails_to_read_names_the_setting_and_the_path(watched: TlsProxy) -> None:
    """Reading /proc/self/mem from offset 0 fails (EIO) even for root: the generic read error."""
    message = await refused(temporal_address=watched.address, temporal_tls_ca_file=Path("/proc/self/mem"))
    assert "PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE=/proc/self/mem cannot be read (" in message


async def test_swapped_or_wrong_files_are_named_without_their_content(
    pki: Pki, tmp_path: Path, watched: TlsProxy
) -> None:
    message = await refused(
        temporal_address=watched.address,
        temporal_tls_cert_file=pki["client.key"],
        temporal_tls_key_file=pki["client.pem"],
    )
    assert f"PLAYBOOK_BOT_TEMPORAL_TLS_CERT_FILE={pki['client.key']} is not a PEM certificate" in message
    assert f"PLAYBOOK_BOT_TEMPORAL_TLS_KEY_FILE={pki['client.pem']} is not a PEM private key" in message
    assert pki["client.key"].read_text().splitlines()[1] not in message
    encrypted = tmp_path / "encrypted.key"
    _openssl(tmp_path, "pkey", "-in", str(pki["client.key"]), "-aes256", "-passout", "pass:x", "-out", str(encrypted))
    message = await refused(
        temporal_address=watched.address, temporal_tls_cert_file=pki["client.pem"], temporal_tls_key_file=encrypted
    )
    assert f"PLAYBOOK_BOT_TEMPORAL_TLS_KEY_FILE={encrypted} is encrypted" in message


async def test_tls_settings_without_an_address_refuse_the_embedded_dev_server(pki: Pki) -> None:
    message = await refused(temporal_tls_ca_file=pki["ca.pem"], temporal_api_key="secret-key-123")
    assert (
        "PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE, PLAYBOOK_BOT_TEMPORAL_API_KEY set but not PLAYBOOK_BOT_TEMPORAL_ADDRESS"
        in message
    )
    assert "embedded dev server" in message and "secret-key-123" not in message
    assert "PLAYBOOK_BOT_TEMPORAL_TLS set but not" in await refused(temporal_tls=True)


async def test_dev_passing_its_own_address_is_refused_too(pki: Pki, upstream: str) -> None:
    """`dev` without TEMPORAL_ADDRESS calls connect(settings, <embedded address>)."""
    with pytest.raises(ConfigError, match="embedded dev server"):
        await connect(settings(temporal_tls_ca_file=pki["ca.pem"]), upstream)


async def test_tls_false_contradicting_a_tls_setting(pki: Pki, watched: TlsProxy) -> None:
    message = await refused(temporal_address=watched.address, temporal_tls=False, temporal_tls_ca_file=pki["ca.pem"])
    assert "PLAYBOOK_BOT_TEMPORAL_TLS=false, but PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE needs TLS" in message


async def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = await refused(temporal_tls_ca_file=tmp_path / "ca.pem", temporal_tls_key_file=tmp_path / "k.pem")
    assert message.startswith("Temporal TLS: ")
    for needle in (
        "PLAYBOOK_BOT_TEMPORAL_ADDRESS",
        "without PLAYBOOK_BOT_TEMPORAL_TLS_CERT_FILE",
        "ca.pem does not exist",
    ):
        assert needle in message


async def test_the_environment_variables_and_blank_values(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, watched: TlsProxy
) -> None:
    """Compose's `${VAR:-}` gives "": unset, not the path "." nor TLS=false."""
    monkeypatch.setenv("PLAYBOOK_BOT_TEMPORAL_ADDRESS", watched.address)
    for name in ("TLS", "TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_SERVER_NAME", "API_KEY"):
        monkeypatch.setenv(f"PLAYBOOK_BOT_TEMPORAL_{name}", "")
    assert tls_config(Settings()) is None
    monkeypatch.setenv("PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE", str(pki["ca.pem"]))
    monkeypatch.setenv("PLAYBOOK_BOT_TEMPORAL_TLS_SERVER_NAME", "temporal.internal")
    monkeypatch.setenv("PLAYBOOK_BOT_TEMPORAL_API_KEY", "key-from-env\n")
    s = Settings()
    tls = tls_config(s)
    assert tls is not None and tls.server_root_ca_cert == pki["ca.pem"].read_bytes()
    assert tls.domain == "temporal.internal" and tls.client_cert is None and tls.client_private_key is None
    assert s.temporal_api_key is not None and s.temporal_api_key.get_secret_value() == "key-from-env"
    monkeypatch.setenv("PLAYBOOK_BOT_TEMPORAL_TLS_CERT_FILE", str(pki["client.pem"]))
    with pytest.raises(ConfigError, match="PLAYBOOK_BOT_TEMPORAL_TLS_CERT_FILE is set without"):
        tls_config(Settings())


def test_the_cli_says_it_in_one_line(tmp_path: Path, pki: Pki) -> None:
    """As an operator sees it: one line on stderr, exit 1, no traceback."""
    result = cli(["status", "some-run"], base_env(data_dir=tmp_path / "data", temporal_tls_ca_file=pki["ca.pem"]))
    assert result.code == 1, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, str(result)
    assert lines[0].startswith("error: Temporal TLS: PLAYBOOK_BOT_TEMPORAL_TLS_CA_FILE set but"), str(result)


def test_dev_refuses_tls_settings_before_starting_its_server(tmp_path: Path) -> None:
    """`dev` without an address would run the embedded server; TLS settings stop it first."""
    result = cli(["dev"], base_env(data_dir=tmp_path / "data", temporal_tls="true"), timeout=30)
    assert result.code == 1, str(result)
    assert result.error_line().startswith("error: Temporal TLS: PLAYBOOK_BOT_TEMPORAL_TLS set but"), str(result)
    assert "dev server ready" not in result.stderr, str(result)
    assert not (tmp_path / "data" / "temporal.db").exists(), "no dev server was started"
