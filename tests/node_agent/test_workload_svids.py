"""What the agent checks before serving a chain from the CA, and the node identity files."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.errors import ConfigError, SvidError
from meshward_common.spiffe_id import SpiffeId
from node_agent import node_identity as ni
from node_agent.state import AgentState
from node_agent.workload_svids import accept_chain, verify_issued_chain
from tests.node_agent.certs import MiniCA

WANT = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/reviews")
HOUR = dt.timedelta(hours=1)


def fresh_state(ca: MiniCA) -> AgentState:
    state = AgentState("node-1")
    state.set_bundle([ca.root])
    return state


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_good_chain_is_accepted_without_its_root():
    ca = MiniCA()
    key = ec.generate_private_key(ec.SECP256R1())
    svid = accept_chain(fresh_state(ca), WANT, key, ca.issue(key.public_key(), WANT, HOUR), now())
    assert svid.spiffe_id == WANT
    assert len(svid.chain) == 1  # the root travels in the bundle, not the chain


def test_chain_for_another_identity_is_refused():
    ca = MiniCA()
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.issue(key.public_key(), "spiffe://cluster.local/ns/default/sa/other", HOUR)
    with pytest.raises(SvidError, match="asked for"):
        accept_chain(fresh_state(ca), WANT, key, chain, now())


def test_chain_naming_another_trust_domain_is_refused_even_from_our_root():
    # The agent verifies with its own trust domain's bundle: a certificate naming b.example has
    # no bundle here, whoever signed it.
    ca = MiniCA()
    key = ec.generate_private_key(ec.SECP256R1())
    other = SpiffeId.parse("spiffe://b.example/ns/default/sa/reviews")
    chain = ca.issue(key.public_key(), str(other), HOUR)
    with pytest.raises(SvidError, match=r"no trust bundle for trust domain b\.example"):
        accept_chain(fresh_state(ca), WANT, key, chain, now())


def test_chain_for_another_key_is_refused():
    ca = MiniCA()
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), WANT, HOUR)
    with pytest.raises(SvidError, match="not for the key"):
        accept_chain(fresh_state(ca), WANT, key, chain, now())


def test_expired_chain_is_refused():
    ca = MiniCA()
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.issue(key.public_key(), WANT, dt.timedelta(seconds=5), now=now() - HOUR)
    with pytest.raises(SvidError, match="expired"):
        accept_chain(fresh_state(ca), WANT, key, chain, now())


def test_a_root_in_the_cas_answer_never_joins_the_bundle():
    # Only a bundle update over the authenticated discovery stream adds a root: a chain that
    # carries its own self-signed root must not verify by bringing it along.
    ours, stranger = MiniCA(), MiniCA(name="stranger's root")
    state = fresh_state(ours)
    version = state.changed.version
    key = ec.generate_private_key(ec.SECP256R1())
    chain = stranger.issue(key.public_key(), WANT, HOUR)
    assert chain[-1] == stranger.root  # the answer carries the stranger's root
    with pytest.raises(SvidError):
        accept_chain(state, WANT, key, chain, now())
    assert state.bundle == (ours.root,)
    assert state.changed.version == version  # no stream was told of a bundle change


def test_a_known_root_in_the_answer_changes_nothing():
    ca = MiniCA()
    state = fresh_state(ca)
    version = state.changed.version
    key = ec.generate_private_key(ec.SECP256R1())
    accept_chain(state, WANT, key, ca.issue(key.public_key(), WANT, HOUR), now())
    assert state.bundle == (ca.root,)
    assert state.changed.version == version


def test_a_node_chain_is_checked_by_the_same_rule():
    # The agent's node SVID path uses verify_issued_chain too: a stranger's chain is refused.
    ours, stranger = MiniCA(), MiniCA(name="stranger's root")
    key = ec.generate_private_key(ec.SECP256R1())
    node = SpiffeId.parse("spiffe://cluster.local/meshward/node/node-1")
    with pytest.raises(SvidError):
        verify_issued_chain(
            (ours.root,), node, key, stranger.issue(key.public_key(), node, HOUR), now()
        )
    body = verify_issued_chain(
        (ours.root,), node, key, ours.issue(key.public_key(), node, HOUR), now()
    )
    assert len(body) == 1  # the leaf, without the root the answer carried
    assert body[0].public_key() == key.public_key()


def test_chain_without_a_leaf_is_refused():
    ca = MiniCA()
    with pytest.raises(SvidError, match="CA returned no certificate for"):
        accept_chain(
            fresh_state(ca), WANT, ec.generate_private_key(ec.SECP256R1()), [ca.root], now()
        )


def test_node_key_is_created_once_with_mode_0600(tmp_path):
    ni.check_state_dir(tmp_path / "state")
    key = ni.load_or_create_key(tmp_path / "state")
    path = tmp_path / "state" / ni.KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert ni.load_or_create_key(tmp_path / "state").public_key() == key.public_key()


def test_node_certificate_for_another_key_is_refused(tmp_path):
    ca = MiniCA()
    state_dir = tmp_path / "state"
    ni.check_state_dir(state_dir)
    ni.load_or_create_key(state_dir)
    other = ec.generate_private_key(ec.SECP256R1())
    chain = ca.issue(other.public_key(), "spiffe://cluster.local/meshward/node/node-1", HOUR)
    ni.save_node_svid(state_dir, ni.NodeSvid(tuple(chain[:1]), other))
    assert (state_dir / ni.CERT_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="does not match"):
        ni.load_node_svid(state_dir, ni.load_or_create_key(state_dir))
