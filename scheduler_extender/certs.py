"""The webhook's own CA and serving certificate: generation and when to renew (pure, no I/O).

A ``Bundle`` is what the Secret holds: ``ca.crt``/``ca.key`` (the CA), ``tls.crt``/``tls.key`` (the
serving certificate it signed) and ``ca-previous.crt`` (the CA before the last CA rotation, kept
in the webhook's ``caBundle`` until it expires, so replicas still serving a certificate of the old
CA stay trusted). A certificate is renewed once 2/3 of its life has passed: serving certificates
live 90 days (renewed after 60), the CA 10 years; a serving certificate that would outlive its CA
is cut to the CA's end. The clock (``now``) is a parameter.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 90
RENEW_AT = 2 / 3  # of a certificate's life
_SKEW = dt.timedelta(minutes=5)  # not-before in the past: nodes' clocks differ a little

KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")
PREVIOUS_CA = "ca-previous.crt"


class BadBundle(ValueError):
    """Secret contents that are not a usable bundle (missing key, unparsable PEM, wrong hosts)."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """PEM bytes of the CA, the serving certificate and the previous CA (``b""``: none)."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes
    previous_ca: bytes = b""

    def as_data(self) -> dict[str, bytes]:
        data = dict(zip(KEYS, (self.ca_crt, self.ca_key, self.tls_crt, self.tls_key), strict=True))
        if self.previous_ca:
            data[PREVIOUS_CA] = self.previous_ca
        return data

    @classmethod
    def from_data(cls, data: dict[str, bytes]) -> Bundle:
        missing = [k for k in KEYS if not data.get(k)]
        if missing:
            raise BadBundle(f"missing {', '.join(missing)}")
        ca_crt, ca_key, tls_crt, tls_key = (data[k] for k in KEYS)
        previous = data.get(PREVIOUS_CA, b"")
        if previous and not _parses(previous):
            previous = b""  # only an extra for the rotation window: dropped, so the bundle heals
        return cls(ca_crt, ca_key, tls_crt, tls_key, previous)

    def ca_bundle(self, now: dt.datetime) -> bytes:
        """The webhook configuration's caBundle: the CA, plus the previous one while it is valid."""
        if self.previous_ca and _cert(self.previous_ca).not_valid_after_utc > now:
            return self.ca_crt + self.previous_ca
        return self.ca_crt


def new_bundle(hosts: Sequence[str], now: dt.datetime) -> Bundle:
    """A fresh CA and a serving certificate for ``hosts`` (DNS names or IP addresses)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_crt = _build_ca(ca_key, now)
    tls_crt, tls_key = _build_serving(ca_crt, ca_key, hosts, now)
    return Bundle(_pem(ca_crt), _key_pem(ca_key), tls_crt, tls_key)


def renewed(bundle: Bundle, hosts: Sequence[str], now: dt.datetime) -> Bundle | None:
    """The bundle to store instead of ``bundle``, or None when it is still good for ``now``.

    CA past 2/3 of its life -> a new CA (the old one kept as ``previous_ca``) and a new serving
    certificate; serving certificate past 2/3, expired, not signed by the CA, or not covering
    ``hosts`` -> a new serving certificate. Raises ``BadBundle`` for unparsable contents.
    """
    try:
        ca = _cert(bundle.ca_crt)
        ca_key = serialization.load_pem_private_key(bundle.ca_key, password=None)
        serving = _cert(bundle.tls_crt)
    except ValueError as exc:
        raise BadBundle(f"unparsable certificate or key: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise BadBundle("the CA key is not an EC key")
    if due(ca, now):
        fresh = new_bundle(hosts, now)
        return replace(fresh, previous_ca=bundle.ca_crt)
    if due(serving, now) or serving.issuer != ca.subject or not _covers(serving, hosts):
        tls_crt, tls_key = _build_serving(ca, ca_key, hosts, now)
        return replace(bundle, tls_crt=tls_crt, tls_key=tls_key)
    return None


def due(cert: x509.Certificate, now: dt.datetime) -> bool:
    """Renew when now >= not_before + RENEW_AT * (not_after - not_before)."""
    return now >= _renew_time(cert)


def next_check(bundle: Bundle, now: dt.datetime, most: float) -> float:
    """Seconds until the earliest renewal is due, at most ``most`` and at least 1."""
    times = [_renew_time(_cert(pem)) for pem in (bundle.ca_crt, bundle.tls_crt)]
    return max(1.0, min(most, (min(times) - now).total_seconds()))


def _renew_time(cert: x509.Certificate) -> dt.datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _parses(pem: bytes) -> bool:
    try:
        _cert(pem)
    except ValueError:
        return False
    return True


def _covers(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    have |= {str(n) for n in san.get_values_for_type(x509.IPAddress)}
    return all(str(_name(h).value) in have for h in hosts)


def _name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _build_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"model-locality-webhook-ca-{now:%Y%m%d%H%M%S}")]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def _build_serving(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: Sequence[str], now: dt.datetime
) -> tuple[bytes, bytes]:
    if not hosts:
        raise BadBundle("no host names for the serving certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    end = min(now + dt.timedelta(days=SERVING_DAYS), ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
