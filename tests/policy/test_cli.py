"""`meshward authz check|lint` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from meshward.cli import main

POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    when:
    - key: request.headers[version]
      values: ["v1"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-info
  namespace: foo
spec:
  action: AUDIT
  rules:
  - to:
    - operation:
        paths: ["/info*"]
"""
CHECK = [
    "authz",
    "check",
    "-n",
    "foo",
    "-l",
    "app=httpbin",
    "-p",
    "spiffe://cluster.local/ns/foo/sa/sleep",
]


def _dir(tmp_path: Path, text: str = POLICY) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "httpbin.yaml").write_text(text)
    return tmp_path / "policies"


def test_check_allow_prints_policy_and_rule_exit_0(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    result = CliRunner().invoke(main, [*CHECK, str(d), "--path", "/info/1", "-H", "Version: v1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ALLOW\n")
    assert "policy: foo/httpbin rule 0" in result.output
    assert "audit:  AUDIT policy foo/audit-info rule 0" in result.output


def test_check_deny_exit_1_and_json(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    result = CliRunner().invoke(
        main, [*CHECK, str(d / "httpbin.yaml"), "--path", "/info", "-o", "json"]
    )
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    assert out["decision"] == "DENY"
    assert out["allowed"] is False
    assert "no rule of the ALLOW policies (foo/httpbin) matched" in out["reason"]
    assert [a["policy"] for a in out["audits"]] == ["foo/audit-info"]
    allowed = CliRunner().invoke(
        main, [*CHECK, str(d), "--path", "/info", "-H", "version: v1", "-o", "json"]
    )
    out = json.loads(allowed.output)
    assert (allowed.exit_code, out["policy"], out["rule"], out["match"]["file"]) == (
        0,
        "foo/httpbin",
        0,
        str(d / "httpbin.yaml"),
    )


def test_check_tcp_and_mtls_mode(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    result = CliRunner().invoke(main, [*CHECK, str(d), "--tcp", "--port", "8000", "-o", "json"])
    assert result.exit_code == 1
    assert (
        json.loads(result.output)["mtls_mode"] == "STRICT"
    )  # meshward's default, as the sidecar enforces


def test_check_refuses_bad_policies_exit_2(tmp_path: Path) -> None:
    d = _dir(tmp_path, POLICY.replace("methods:", "method:"))
    result = CliRunner().invoke(main, [*CHECK, str(d)])
    assert result.exit_code == 2
    assert (
        f"{d / 'httpbin.yaml'}:16: spec.rules[0].to[0].operation.method: unknown field"
        in result.output
    )


def test_check_bad_arguments_exit_2(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    assert CliRunner().invoke(main, [*CHECK, str(d), "-H", "no-colon"]).exit_code == 2
    assert CliRunner().invoke(main, [*CHECK, str(d), "-l", "nolabel"]).exit_code == 2
    assert CliRunner().invoke(main, [*CHECK, str(tmp_path / "missing")]).exit_code == 2
    assert CliRunner().invoke(main, ["authz", "check"]).exit_code == 2


def test_lint_prints_every_problem_with_file_and_line(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    (d / "bad.yaml").write_text(
        POLICY.replace('["GET"]', '["GET", ""]')
        .replace("name: audit-info", "name: Audit")
        .replace("AUDIT", "CUSTOM")
    )
    result = CliRunner().invoke(main, ["authz", "lint", str(d)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    bad = str(d / "bad.yaml")
    assert f"{bad}:16: spec.rules[0].to[0].operation.methods[1]: empty value" in lines
    assert any(line.startswith(f"{bad}:25: metadata.name: ") for line in lines)
    assert any(line.startswith(f"{bad}:28: spec.action: CUSTOM") for line in lines)
    assert "3 problem(s): 2 file(s), 2 valid resource(s)" in result.output


def test_lint_clean_exit_0_and_json(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    result = CliRunner().invoke(main, ["authz", "lint", str(d), "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"files": 1, "resources": 2, "problems": []}
