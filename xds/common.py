"""Small helpers shared by the Envoy resource builders."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import duration_pb2

INTERNAL_HEADER = "x-wakegate-internal"
"""Request header the internal listener sets (and the others strip) before routing, so
routes in the route configuration both plain-HTTP listeners share can tell them apart."""


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def ads_config_source() -> config_source_pb2.ConfigSource:
    """Fetch a resource over the aggregated (ADS) stream, v3 API."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((value,)) for value in range(0x80)]


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One protobuf wire-format field of type bytes, string or message.

    A repeated message field is the concatenation of such entries, so resources
    can be assembled from separately encoded parts without re-serialising them.
    """
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload
