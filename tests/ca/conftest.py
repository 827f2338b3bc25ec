from __future__ import annotations

import datetime as dt

import pytest

from ca.authority import make_intermediate, make_root
from ca.issuer import SigningAuthority

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
TD = "cluster.local"


@pytest.fixture(scope="session")
def root_authority() -> SigningAuthority:
    cert, key = make_root(TD, NOW)
    return SigningAuthority(cert, key, (), (cert,))


@pytest.fixture(scope="session")
def intermediate_authority(root_authority: SigningAuthority) -> SigningAuthority:
    cert, key = make_intermediate(root_authority.cert, root_authority.key, TD, NOW)
    return SigningAuthority(cert, key, (root_authority.cert,), (root_authority.cert,))
