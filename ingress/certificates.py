"""Checking a TLS Secret's certificate and key before any gateway is sent them.

Envoy refuses a listener whose certificate does not load, and with that listener every
other TLS change in the same update, so one bad Secret would hold back every tenant's
HTTPS changes. A pair that does not load is therefore kept from the gateways here, and
the ingresses naming it report why.
"""

from __future__ import annotations

import functools
import ssl
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=4096)
def certificate_problem(cert_chain_pem: str, private_key_pem: str) -> str | None:
    """Why the PEM pair would not load as a server certificate, or None if it does."""
    if "-----BEGIN CERTIFICATE-----" not in cert_chain_pem:
        return "tls.crt: expected a PEM certificate"
    if "PRIVATE KEY-----" not in private_key_pem:
        return "tls.key: expected a PEM private key"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Judge the pair, not this host's policy on key sizes or signature algorithms.
    context.set_ciphers("ALL:@SECLEVEL=0")
    with tempfile.TemporaryDirectory(prefix="wakegate-cert-") as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_text(cert_chain_pem)
        key.write_text(private_key_pem)
        try:
            context.load_cert_chain(cert, key, password=lambda: b"")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                return "tls.key does not match the certificate in tls.crt"
            if exc.reason and exc.reason != "PEM lib":
                return f"tls.crt and tls.key do not load: {exc.reason}"
            return (
                "tls.crt and tls.key do not load: a damaged PEM block, or an encrypted "
                "private key (expected an unencrypted one)"
            )
    return None
