"""A TLS Secret's pair is checked before it can reach a gateway (plain function calls)."""

from __future__ import annotations

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.support.conformance import self_signed
from wakegate.ingress.certificates import certificate_problem
from wakegate.ingress.manifests import ManifestError, load_manifests


def encrypted(key_pem: str) -> str:
    key = load_pem_private_key(key_pem.encode(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()


def test_a_matching_pair_loads() -> None:
    assert certificate_problem(*self_signed("a.example.com")) is None


def test_pairs_that_do_not_load_say_why() -> None:
    cert, key = self_signed("a.example.com")
    _, other_key = self_signed("a.example.com")
    damaged = cert.replace(cert.splitlines()[3], cert.splitlines()[3][::-1])
    cases = {
        "mismatch": (cert, other_key, "tls.key does not match the certificate in tls.crt"),
        "no cert": ("not a certificate", key, "tls.crt: expected a PEM certificate"),
        "no key": (cert, "", "tls.key: expected a PEM private key"),
        "encrypted key": (cert, encrypted(key), "an encrypted private key"),
        "damaged cert": (damaged, key, "a damaged PEM block"),
    }
    for name, (c, k, expected) in cases.items():
        problem = certificate_problem(c, k)
        assert problem is not None and expected in problem, (name, problem)
        assert "\n" not in problem


def test_a_pair_only_envoy_refuses_is_left_to_the_gateway() -> None:
    # secp256k1 loads with OpenSSL; Envoy serves P-256/384/521 only and NACKs it, which
    # the status reports as GatewayRejected.
    assert certificate_problem(*self_signed("a.example.com", "secp256k1")) is None


def secret(cert: str, key: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tls", "namespace": "default"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert, "tls.key": key},
        }
    )


def test_a_local_secret_that_does_not_load_is_refused_with_one_line() -> None:
    cert, key = self_signed("a.example.com")
    loaded = load_manifests(secret(cert, key), "ok.yaml")
    assert loaded.certificates["default/tls"].cert_chain_pem == cert
    _, other_key = self_signed("a.example.com")
    with pytest.raises(ManifestError) as caught:
        load_manifests(secret(cert, other_key), "bad.yaml")
    assert str(caught.value) == (
        "bad.yaml: document 0: data: tls.key does not match the certificate in tls.crt"
    )
