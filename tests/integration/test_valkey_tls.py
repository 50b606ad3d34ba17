"""Valkey over TLS (`rediss://`, ElastiCache in transit encryption): a real valkey-server that
listens for TLS only, with a CA and a server certificate made here. The online store, the
replicas' signals and the CTR state verify the server against `online.tls_ca_file`; a client that
does not trust that CA, or has the wrong password, gets a clear `StoreUnavailableError` within
its timeout, never a hang or a raw client exception."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError as PydanticValidationError

from strata.config import Settings, ValkeyOnlineConfig
from strata.ctr.preprocess import CtrBatch
from strata.ctr.state_valkey import ValkeyCtrState
from strata.errors import ConfigError, StoreUnavailableError
from strata.features.online.signals import ValkeySignals
from strata.features.online.valkey import ValkeyOnlineStore

from .conftest import PrivateValkey

pytestmark = pytest.mark.integration
PASSWORD = "tls-and/auth:together"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca(folder: Path, cn: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (its PEM file, certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _server_tls(folder: Path) -> tuple[Path, Path, Path]:
    """CA file, server certificate (for 127.0.0.1 and localhost, signed by the CA) and key."""
    ca_path, ca, ca_key = _ca(folder, "strata-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _server_tls(tmp_path_factory.mktemp("tls"))


def _server(tmp_path: Path, tls: tuple[Path, Path, Path], password: str | None) -> PrivateValkey:
    folder = tmp_path / "vk"
    folder.mkdir()
    vk = PrivateValkey(folder, tls=tls, password=password)
    vk.start()
    return vk


@pytest.fixture
def tls_valkey(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> Iterator[PrivateValkey]:
    vk = _server(tmp_path, tls_files, None)
    yield vk
    vk.stop()


@pytest.fixture
def tls_auth_valkey(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> Iterator[PrivateValkey]:
    vk = _server(tmp_path, tls_files, PASSWORD)
    yield vk
    vk.stop()


def _signal_round_trip(cfg: ValkeyOnlineConfig) -> list[tuple[str, str]]:
    signals = ValkeySignals(cfg)
    got: list[tuple[str, str]] = []
    arrived, stop = threading.Event(), threading.Event()

    def on_message(name: str, message: str) -> None:
        got.append((name, message))
        arrived.set()

    signals.listen(["serving:x"], on_message, stop)
    try:
        for _ in range(100):  # the listener subscribes on its own thread
            if signals.publish("serving:x", "v0007") > 0:
                break
            threading.Event().wait(0.05)
        assert arrived.wait(5)
    finally:
        stop.set()
        signals.close()
    return got


def test_features_signals_and_ctr_state_over_tls(tls_valkey: PrivateValkey) -> None:
    cfg = tls_valkey.config()  # the server has no plain-text port: every call below is TLS
    assert cfg.url.startswith("rediss://")
    store = ValkeyOnlineStore(cfg)
    try:
        ids = np.array([3, 1, 2])
        store.write("item", ids, {"pop": np.array([3.0, 1.0, 2.0])}, version="v1")
        store.activate("item", "v1")
        rows = store.read("item", np.array([1, 2, 3, 9]), ["pop"])
        assert rows.version == "v1"
        assert rows.found.tolist() == [True, True, True, False]
        np.testing.assert_allclose(rows.values["pop"][:3], [1.0, 2.0, 3.0])

        ctr = ValkeyCtrState(store, "c", 2, 1, window=4, recent_rows=4, ttl_s=60)
        dense = np.ones((2, 2), np.float32)
        pred = ctr.record(np.array([0.2, 0.7], np.float32), CtrBatch(dense, np.zeros((2, 1))))
        joined, window = ctr.label(pred, np.array([1.0, 0.0], np.float32))
        assert joined.found.tolist() == [True, True]
        np.testing.assert_allclose(window.probs, [0.2, 0.7], rtol=1e-6)
    finally:
        store.close()
    assert _signal_round_trip(cfg) == [("serving:x", "v0007")]


def test_tls_from_the_environment(
    tls_valkey: PrivateValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_ONLINE__TYPE", "valkey")
    monkeypatch.setenv("STRATA_ONLINE__URL", tls_valkey.url)
    monkeypatch.setenv("STRATA_ONLINE__TLS_CA_FILE", str(tls_valkey.config().tls_ca_file))
    online = Settings().online
    assert isinstance(online, ValkeyOnlineConfig)
    store = ValkeyOnlineStore(online)
    try:
        store.health()
    finally:
        store.close()


@pytest.mark.parametrize("trust", ["system", "other-ca"])
def test_a_client_that_does_not_trust_the_ca_fails_clearly(
    tls_valkey: PrivateValkey, tmp_path: Path, trust: str
) -> None:
    other = None if trust == "system" else _ca(tmp_path, "someone-else")[0]
    cfg = tls_valkey.config(tls_ca_file=other)
    store = ValkeyOnlineStore(cfg)
    try:
        with pytest.raises(StoreUnavailableError, match="certificate verify failed") as err:
            store.health()
        assert str(err.value).startswith(f"online store {tls_valkey.url}:")
        assert "\n" not in str(err.value)
        with pytest.raises(StoreUnavailableError, match="certificate verify failed"):
            store.read("item", np.array([1]), ["pop"])
    finally:
        store.close()
    with pytest.raises(StoreUnavailableError, match="certificate verify failed"):
        ValkeySignals(cfg).publish("serving:x", "v")


def test_plain_text_to_a_tls_port_is_an_error_not_a_hang(tls_valkey: PrivateValkey) -> None:
    plain = tls_valkey.url.replace("rediss://", "redis://")
    store = ValkeyOnlineStore(ValkeyOnlineConfig(url=plain, timeout_ms=300))
    try:
        with pytest.raises(StoreUnavailableError, match="online store redis://"):
            store.health()
    finally:
        store.close()


def test_password_and_tls_together(tls_auth_valkey: PrivateValkey) -> None:
    cfg = tls_auth_valkey.config()
    store = ValkeyOnlineStore(cfg)
    try:
        store.health()
        assert store.client.set("k", "v") and store.client.get("k") == b"v"
    finally:
        store.close()
    assert _signal_round_trip(cfg) == [("serving:x", "v0007")]


@pytest.mark.parametrize("password", [None, "not-the-password"])
def test_a_wrong_or_missing_password_over_tls_is_a_clear_error(
    tls_auth_valkey: PrivateValkey, password: str | None
) -> None:
    cfg = tls_auth_valkey.config(password=password)
    store = ValkeyOnlineStore(cfg)
    expected = "refused the password" if password else "requires a password"
    try:
        with pytest.raises(StoreUnavailableError, match=expected) as err:
            store.health()
        assert PASSWORD not in str(err.value)
        assert password is None or password not in str(err.value)
    finally:
        store.close()
    with pytest.raises(StoreUnavailableError, match=expected):
        ValkeySignals(cfg).publish("serving:x", "v")


def test_ca_file_settings_are_checked(tmp_path: Path) -> None:
    # a CA for a plain-text URL would mean "TLS on" to the reader and off on the wire
    with pytest.raises(PydanticValidationError, match="not rediss://"):
        ValkeyOnlineConfig(url="redis://127.0.0.1:1/0", tls_ca_file=tmp_path / "ca.pem")
    cfg = ValkeyOnlineConfig(url="rediss://127.0.0.1:1/0", tls_ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"tls_ca_file: .*missing\.pem is not a file"):
        ValkeyOnlineStore(cfg)
    with pytest.raises(ConfigError, match="tls_ca_file"):
        ValkeySignals(cfg)
