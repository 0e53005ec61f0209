"""Throw-away PKI for a loopback control plane: CA, serving cert, admin client cert, SA key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _sign(subject: x509.Name, public_key, issuer: x509.Name, issuer_key, *, ca: bool, extensions=()):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def paths_in(directory: Path) -> dict[str, Path]:
    """Where ``generate`` writes each role's file: the plane's parts read them from here."""
    names = {
        "ca_cert": "ca.crt",
        "ca_key": "ca.key",
        "serving_cert": "apiserver.crt",
        "serving_key": "apiserver.key",
        "admin_cert": "admin.crt",
        "admin_key": "admin.key",
        "sa_key": "sa.key",
        "sa_pub": "sa.pub",
    }
    return {role: directory / name for role, name in names.items()}


def generate(directory: Path, extra_ips: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write the PKI into ``directory`` and return the paths by role.

    ``extra_ips`` go into the serving certificate: a real node's pods reach the API server at
    the node's address.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("envtest-ca")
    ca_cert = _sign(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)

    serving_key = _key()
    sans = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            *[x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips],
        ]
    )
    serving_usage = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    serving_cert = _sign(
        _name("kube-apiserver"), serving_key.public_key(), ca_name, ca_key, ca=False,
        extensions=[sans, serving_usage],
    )  # fmt: skip

    # O=system:masters is the built-in cluster-admin group: the admin kubeconfig's identity.
    admin_key = _key()
    client_usage = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    admin_cert = _sign(
        _name("envtest-admin", "system:masters"), admin_key.public_key(), ca_name, ca_key, ca=False,
        extensions=[client_usage],
    )  # fmt: skip

    # Service-account tokens are signed with an RSA key generated for this start only.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    paths = paths_in(directory)
    for role, cert in (("ca_cert", ca_cert), ("serving_cert", serving_cert), ("admin_cert", admin_cert)):
        paths[role].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for role, key in (("ca_key", ca_key), ("serving_key", serving_key), ("admin_key", admin_key)):
        _write_key(paths[role], key)
    _write_key(paths["sa_key"], sa_key)
    paths["sa_pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths
