"""The embedded control plane's keys and certificates: a CA, serving and client certificates, SA keys.

Writes PEM files into one directory; runs nothing. Short-lived by design (a dev or test cluster),
so everything is made fresh for each new cluster directory and reused while it exists.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmshift.privatefile import write_private

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of every file the control plane and its clients need."""

    dir: Path

    ca_cert = property(lambda self: self.dir / "ca.crt")
    ca_key = property(lambda self: self.dir / "ca.key")
    serving_cert = property(lambda self: self.dir / "apiserver.crt")
    serving_key = property(lambda self: self.dir / "apiserver.key")
    admin_cert = property(lambda self: self.dir / "admin.crt")
    admin_key = property(lambda self: self.dir / "admin.key")
    sa_key = property(lambda self: self.dir / "sa.key")
    sa_pub = property(lambda self: self.dir / "sa.pub")

    def complete(self) -> bool:
        return all(
            p.exists()
            for p in (self.ca_cert, self.serving_cert, self.serving_key, self.admin_cert, self.admin_key,
                      self.sa_key, self.sa_pub)
        )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _serving_sans(extra_ips: tuple[str, ...]) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.0.0.1", *extra_ips)] + [
        x509.DNSName(name) for name in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                        "kubernetes.default.svc.cluster.local")
    ]


def _serving_cert_covers(pki: Pki, extra_ips: tuple[str, ...]) -> bool:
    cert = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress)
    return all(ipaddress.ip_address(ip) in ips for ip in extra_ips)


def issue_pair(pki: Pki, stem: str, common_name: str, organization: str | None = None, *,
               server_ips: tuple[str, ...] = (), client: bool = True) -> tuple[Path, Path]:
    """A key and a certificate signed by the cluster's CA, written as ``<stem>.crt`` and ``<stem>.key``.

    ``server_ips`` makes it a serving certificate for those addresses; ``client`` a client one. Kept
    if both files already exist.
    """
    cert_path, key_path = pki.dir / f"{stem}.crt", pki.dir / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{pki.ca_key} is not the EC key this module writes")
    ca_name = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_ips else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    sans: list[x509.GeneralName] | None = [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips] or None
    _write_key(key_path, key)
    _write_cert(cert_path, _issue(_name(common_name, organization), key, ca_name, ca_key, usage=usage, sans=sans))
    return cert_path, key_path


def ensure_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Create the CA, the API server's serving pair, an admin client pair and SA keys if absent.

    ``extra_ips`` are addresses, beside 127.0.0.1, that the API server's certificate must name (a
    node's address); a serving certificate that lacks one is issued again from the same CA.
    """
    pki = Pki(directory)
    if pki.complete():
        if not _serving_cert_covers(pki, extra_ips):
            ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
            if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{pki.ca_key} is not the EC key this module writes")
            ca_name = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).subject
            serving_key = ec.generate_private_key(ec.SECP256R1())
            _write_key(pki.serving_key, serving_key)
            _write_cert(pki.serving_cert, _issue(_name("kube-apiserver"), serving_key, ca_name, ca_key,
                                                 usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                                                 sans=_serving_sans(extra_ips)))
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("vmshift-dev-ca")
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, _issue(ca_name, ca_key, ca_name, ca_key, ca=True))

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans = _serving_sans(extra_ips)
    _write_key(pki.serving_key, serving_key)
    _write_cert(pki.serving_cert, _issue(_name("kube-apiserver"), serving_key, ca_name, ca_key,
                                         usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans))

    admin_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki.admin_key, admin_key)
    _write_cert(pki.admin_cert, _issue(_name("vmshift-admin", "system:masters"), admin_key, ca_name, ca_key,
                                       usage=[ExtendedKeyUsageOID.CLIENT_AUTH]))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki
