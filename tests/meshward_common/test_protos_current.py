"""The committed stubs are exactly what `make protos` generates from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.name: p.read_text() for p in gen.generate(tmp_path / "protos")}
    committed_dir = ROOT / "meshward_common" / "protos"
    committed = {p.name: p.read_text() for p in committed_dir.iterdir() if p.is_file()}
    assert set(fresh) == set(committed), "run `make protos` and commit the result"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run `make protos`"


def test_ca_proto_keeps_istio_wire_names() -> None:
    from meshward_common.protos import istio_ca_pb2

    svc = istio_ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    assert svc.full_name == "istio.v1.auth.IstioCertificateService"
    req = istio_ca_pb2.IstioCertificateRequest.DESCRIPTOR
    assert {f.name: f.number for f in req.fields} == {
        "csr": 1,
        "validity_duration": 3,
        "metadata": 4,
    }
    resp = istio_ca_pb2.IstioCertificateResponse.DESCRIPTOR
    assert {f.name: f.number for f in resp.fields} == {"cert_chain": 1}
