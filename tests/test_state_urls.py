"""A Redis URL with a password (in the user part or as redis-py's ``password`` option), over TLS or on a unix socket,
against a real ``redis-server`` that requires the password: taken, used, and the password never in a repr, a dump, a log line
or an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from genroute.errors import StateUnavailable
from genroute.state import RedisStateConfig, build_state
from genroute.state.redis_store import RedisStateStore

from .chroma_fixtures import free_port
from .redis_fixtures import RedisServer

PASSWORD = "s3cr3t-Pw7"


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files in ``folder``)."""
    import datetime

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    socket = tmp_path / "redis.sock"
    cert, key = _certificate(tmp_path)
    server = RedisServer(free_port(), tmp_path / "redis.log",
                         options=("--requirepass", PASSWORD, "--unixsocket", str(socket), "--unixsocketperm", "700",
                                  "--tls-port", str(free_port()), "--tls-cert-file", str(cert), "--tls-key-file",
                                  str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"))
    server.start()
    yield server
    server.stop()


def _urls(server: RedisServer, folder: Path) -> list[str]:
    socket, tls = folder / "redis.sock", server.options[server.options.index("--tls-port") + 1]
    return [f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}",
            f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/2",
            f"unix://:{PASSWORD}@{socket}", f"unix://{socket}?password={PASSWORD}&db=1",
            f"rediss://:{PASSWORD}@127.0.0.1:{tls}/0?ssl_ca_certs={folder / 'cert.pem'}",
            f"rediss://127.0.0.1:{tls}/0?ssl_ca_certs={folder / 'cert.pem'}&password={PASSWORD}"]


def test_a_password_or_a_unix_socket_in_the_url_is_used_and_never_shown(locked_redis: RedisServer, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    # The password given as redis-py's query option (redis://host/0?password=...) was shown in full by the config's
    # repr and dumps (only the user:password@ form was masked).
    for i, url in enumerate(_urls(locked_redis, tmp_path)):
        store = build_state({"kind": "redis", "url": url, "prefix": f"u{i}:", "on_error": "closed"})
        assert isinstance(store, RedisStateStore)

        async def use(store: RedisStateStore = store) -> tuple[int, int]:
            held, _ = await store.hold("acct", 5, 10, ttl_s=60, keep_s=60)
            await store.settle("acct", held, 3, keep_s=60)
            try:
                return await store.usage("acct")
            finally:
                await store.aclose()

        assert asyncio.run(use()) == (3, 0)
        shown = [repr(store.config), str(store.config), str(store.config.model_dump()), store.config.model_dump_json()]
        assert all(PASSWORD not in text for text in shown), shown
        assert "***" in shown[0]

    # A wrong password, an untrusted certificate, then the server gone: the error and the log line say which,
    # naming the store without the password (a wrong password read "is unreachable", as a network fault would).
    for url in _urls(locked_redis, tmp_path):
        wrong = RedisStateStore(RedisStateConfig(kind="redis", url=url.replace(PASSWORD, PASSWORD + "x"),
                                                 on_error="closed"))
        with pytest.raises(StateUnavailable, match="refused this router's credentials") as caught:
            asyncio.run(wrong.usage("acct"))
        assert PASSWORD not in str(caught.value)
        assert str(caught.value).endswith("; correct the password in state.url")  # what to do, not only what failed
    untrusted = _urls(locked_redis, tmp_path)[-2].split("?")[0]  # no ssl_ca_certs: the self-signed one is not trusted
    with pytest.raises(StateUnavailable, match="is unreachable .*CERTIFICATE_VERIFY_FAILED") as caught:
        asyncio.run(RedisStateStore(RedisStateConfig(kind="redis", url=untrusted, on_error="closed")).usage("acct"))
    assert PASSWORD not in str(caught.value)
    locked_redis.stop()
    with caplog.at_level(logging.WARNING, logger="genroute.state"):
        for url in _urls(locked_redis, tmp_path):
            store = RedisStateStore(RedisStateConfig(kind="redis", url=url, on_error="open", timeout_s=0.5,
                                                     connect_timeout_s=0.5))
            asyncio.run(store.usage("acct"))
            assert store.fallbacks == 1
    assert caplog.records and all(PASSWORD not in r.getMessage() for r in caplog.records)
    # A newcomer whose Redis is not running is told what to do, in the log line and in the error alike.
    gone_lines = [r.getMessage() for r in caplog.records if "using this process's memory" in r.getMessage()]
    assert gone_lines and all(line.endswith("start Redis (or Valkey) at that address, or correct state.url")
                              for line in gone_lines), gone_lines
    gone = RedisStateStore(RedisStateConfig(kind="redis", url=_urls(locked_redis, tmp_path)[0], on_error="closed",
                                            connect_timeout_s=0.5))
    with pytest.raises(StateUnavailable, match=r"nothing was sent; start Redis \(or Valkey\) at that address, "
                                                r"or correct state.url$"):
        asyncio.run(gone.usage("acct"))
