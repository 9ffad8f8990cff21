"""Shared fixtures: a real xDS control plane on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.envoy import ControlPlane, xds_control_plane


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlane]:
    """An XdsServer + SnapshotCache serving ADS on 127.0.0.1:<free port>."""
    async with xds_control_plane() as cp:
        yield cp
