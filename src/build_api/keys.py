"""The scheduler's secret key, its fingerprint, and the TLS contexts.

The scheduler's identity is its RSA key, not a certificate chain: a `.cap`
file carries the SHA-256 of the key's public half, and the dialling side
checks it after the TLS handshake, before any RPC is sent. The certificate
is made afresh from the key at each start and only carries the key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from build_api.errors import ConfigError, PeerKeyMismatchError

logger = logging.getLogger(__name__)

KEY_BITS = 2048


def b64url(data: bytes) -> str:
    """Base64url without padding, as used in sturdy references."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url`; raises ``ValueError`` on bad input."""
    if not text or any(c not in _B64URL_ALPHABET for c in text):
        raise ValueError("not base64url")
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded)


_B64URL_ALPHABET = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)


class SecretKey:
    """The scheduler's RSA key as loaded from its PEM file."""

    def __init__(self, private_key: rsa.RSAPrivateKey, pem: bytes) -> None:
        self._key = private_key
        self._pem = pem

    @classmethod
    def load_or_generate(cls, path: Path) -> SecretKey:
        """Load the key at ``path``, generating and saving one if it is absent."""
        if not path.exists():
            logger.info("Generating new secret key to store in %s", path)
            key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                # A new directory for secrets: no one else may list it.
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_private_file(path, pem)
            except OSError as exc:
                raise ConfigError(f"cannot write the key to {path}: {exc}") from None
            return cls(key, pem)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the key in {path}: {exc}") from None
        try:
            loaded = serialization.load_pem_private_key(pem, password=None)
        except ValueError as exc:
            raise ConfigError(f"{path} is not a PEM private key: {exc}") from None
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ConfigError(f"{path} holds a key that is not RSA")
        return cls(loaded, pem)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the public key (SubjectPublicKeyInfo DER), base64url."""
        return public_key_fingerprint(self._key.public_key())

    def derive_secret(self, name: str) -> bytes:
        """A stable secret for ``name``, derived from the key file's bytes.

        Service ids made this way survive a restart with the same key, so
        the `.cap` files stay valid and need not be stored anywhere.
        """
        return hmac.new(
            hashlib.sha256(self._pem).digest(), name.encode(), "sha256"
        ).digest()

    def server_ssl_context(self) -> ssl.SSLContext:
        """A TLS server context presenting a self-signed certificate of the key."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert_pem = self._self_signed_certificate().public_bytes(
            serialization.Encoding.PEM
        )
        # The ssl module only loads certificates from files.
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "server.pem"
            write_private_file(bundle, self._pem + cert_pem)
            context.load_cert_chain(bundle)
        return context

    def _self_signed_certificate(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "build-scheduler")])
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(self._key, hashes.SHA256())
        )


def public_key_fingerprint(public_key: PublicKeyTypes) -> str:
    """The base64url SHA-256 of a public key's SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return b64url(hashlib.sha256(der).digest())


def client_ssl_context() -> ssl.SSLContext:
    """A TLS client context that accepts any certificate.

    Trust comes from pinning the key fingerprint afterwards
    (:func:`check_peer_certificate`), not from a certificate authority.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def check_peer_certificate(der: bytes | None, expected_fingerprint: str) -> None:
    """Raise unless the DER certificate carries the key we expect."""
    if der is None:
        raise PeerKeyMismatchError("the scheduler presented no certificate")
    certificate = x509.load_der_x509_certificate(der)
    actual = public_key_fingerprint(certificate.public_key())
    if not hmac.compare_digest(actual.encode(), expected_fingerprint.encode()):
        raise PeerKeyMismatchError(
            f"the scheduler's key has fingerprint {actual}, but the capability "
            f"file expects {expected_fingerprint}; refusing to talk to it"
        )


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(tmp, path)
