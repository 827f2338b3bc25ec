"""What a hostile or broken YAML file may cost, and what it is told: one line, file and line >= 1,
the bound it hit by name, never a value in full. Registry files use the same loader."""

from __future__ import annotations

import pytest

from meshward_common.errors import ConfigError
from meshward_common.registry import REGISTRY_LIMITS, parse_registry
from meshward_common.yaml_lines import DEFAULT_LIMITS, Limits, YamlError, load_documents


def laughs(levels: int, width: int = 9, key: str = "x") -> str:
    """A 'billion laughs' document: each level an alias list of the one below."""
    lines = [f'{key}:\n  a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_anything_is_built() -> None:
    text = laughs(9)  # 9^9 = 387 million values from ~400 bytes
    assert len(text) < 1000
    with pytest.raises(YamlError) as err:
        load_documents(text, "l.yaml")
    assert str(err.value) == (
        "l.yaml:7: yaml: more than 100000 values once aliases are expanded "
        "(the limit for YAML files)"
    )


def test_aliases_within_the_bound_are_fine() -> None:
    (doc,) = load_documents(laughs(3), "l.yaml")  # 9^3 = 729 values
    assert len(doc.value["x"]["a3"][0][0]) == 9


def test_nesting_deeper_than_the_bound_is_refused_at_its_line() -> None:
    text = "a:\n" + "  " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(YamlError) as err:
        load_documents(text, "d.yaml")
    assert (
        str(err.value) == "d.yaml:2: yaml: nested deeper than 64 levels (the limit for YAML files)"
    )
    ok = "a: " + "[" * 60 + "]" * 60 + "\n"
    assert load_documents(ok, "d.yaml")[0].line == 1


def test_a_file_over_the_size_bound_is_refused_unread() -> None:
    small = Limits(max_bytes=100, max_nodes=10, max_depth=5, what="test files")
    with pytest.raises(
        YamlError, match=r"^t.yaml:1: yaml: larger than 100 bytes \(the limit for test files\)$"
    ):
        load_documents("a: " + "b" * 200, "t.yaml", small)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a: !!int a\n", 1, "!!int cannot hold 'a'"),
        ("a: 1\nb: !!timestamp x\n", 2, "!!timestamp cannot hold 'x'"),
        ("a: !!float nope\n", 1, "!!float cannot hold 'nope'"),
        ("a: !!int\n", 1, "!!int cannot hold ''"),
        ("a: !!binary 'a'\n", 1, "failed to decode base64 data"),
        ("a:\n  ? [x]\n  : 1\n", 2, "a key must be a plain value, not a list or mapping"),
        ("a: 1\na: 2\n", 2, "duplicate key 'a'"),
        ("a: &x [*x]\n", 1, "found unconstructable recursive node"),
        ("a: *nowhere\n", 1, "YAML syntax error: found undefined alias"),
        ("a: [\n", 2, "YAML syntax error"),
        ("a: b\n\x00\n", 2, "character '\\x00' is not allowed in YAML"),
        ("a: !!python/object:os.system x\n", 1, "could not determine a constructor"),
        ("a: !!int " + "9" * 5000 + "\n", 1, "!!int cannot hold '99999"),
    ],
)
def test_type_confused_and_broken_yaml_is_one_line_with_its_line(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(YamlError) as err:
        load_documents(text, "f.yaml")
    message = str(err.value)
    assert message.startswith(f"f.yaml:{line}: yaml: "), message
    assert reason in message
    assert "\n" not in message
    assert len(message) < 200  # never a whole value


def test_documents_carry_their_first_line() -> None:
    docs = load_documents("a: 1\n---\n\n- x\n---\nplain\n", "f.yaml")
    assert [(d.line, d.value) for d in docs] == [(1, {"a": 1}), (4, ["x"]), (6, "plain")]


def test_default_and_registry_bounds_are_what_the_docs_say() -> None:
    assert Limits(1 << 20, 100_000, 64) == DEFAULT_LIMITS
    assert (REGISTRY_LIMITS.max_bytes, REGISTRY_LIMITS.max_nodes) == (16 << 20, 1_500_000)


WORKLOAD = "workloads:\n  - name: a\n    namespace: default\n    serviceAccount: a\n    node: n1\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[a]\n", "r.yaml:1: registry: must be a mapping with a workloads list, got a list"),
        ("workloads: {a: 1}\n", "r.yaml:1: workloads: must be a list, got a mapping"),
        ("workloads: [a]\n", "r.yaml:1: workloads[0]: must be a mapping, got str 'a'"),
        (
            "trustDomain: [a]\nworkloads: []\n",
            "r.yaml:1: trustDomain: must be a string, got a list",
        ),
        ("trustDomain: Bad!\n", "r.yaml:1: trustDomain: trust domain 'Bad!' has characters"),
        (
            "workloads: []\nextra: 1\n",
            "r.yaml:2: extra: unknown field (known: trustDomain, workloads)",
        ),
        (
            WORKLOAD.replace("name: a", "name: [a]"),
            "r.yaml:2: workloads[0].name: must be a string, got a list",
        ),
        (
            WORKLOAD.replace("node: n1", "node: {x: 1}"),
            "r.yaml:5: workloads[0].node: must be a string, got a mapping",
        ),
        (WORKLOAD.replace("    node: n1\n", ""), "r.yaml:2: workloads[0].node: required"),
        (
            WORKLOAD + "    ports: [true]\n",
            "r.yaml:6: workloads[0].ports: must be a list of port numbers",
        ),
        (
            WORKLOAD + "    ports: 80\n",
            "r.yaml:6: workloads[0].ports: must be a list of port numbers",
        ),
        (
            WORKLOAD + "    labels: [a]\n",
            "r.yaml:6: workloads[0].labels: must be a mapping, got a list",
        ),
        (
            WORKLOAD + "    labels: {v: 1}\n",
            "r.yaml:6: workloads[0].labels.v: label value must be a string (quote it), got int 1",
        ),
        (
            WORKLOAD + "    address: [1]\n",
            "r.yaml:6: workloads[0].address: must be a string, got a list",
        ),
        (
            WORKLOAD + "    address: 10.0.0.300\n",
            "r.yaml:6: workloads[0].address: '10.0.0.300' is not an IP address",
        ),
        (
            WORKLOAD + "    selector: [a]\n",
            "r.yaml:6: workloads[0].selector: must be a mapping with netns and uids, got a list",
        ),
        (
            WORKLOAD + "    selector: {netns: ../x}\n",
            "r.yaml:6: workloads[0].selector.netns: '../x' is not a name under /run/netns",
        ),
        (
            WORKLOAD + "    selector: {netns: x, uids: [true]}\n",
            "r.yaml:6: workloads[0].selector.uids: must be a non-empty list of uids",
        ),
        (
            WORKLOAD + "    selector: {netns: x, uids: [-1]}\n",
            "r.yaml:6: workloads[0].selector.uids: must be a non-empty list of uids",
        ),
        (
            WORKLOAD + "  - name: a\n    namespace: default\n    serviceAccount: b\n    node: n1\n",
            "r.yaml:6: workloads[1].name: workload default/a is listed twice (first on line 2)",
        ),
        (WORKLOAD + "---\nworkloads: []\n", "r.yaml:7: registry: a registry is one YAML document"),
        ("workloads: !!int x\n", "r.yaml:1: yaml: !!int cannot hold 'x'"),
        (
            laughs(9, key="workloads"),
            "r.yaml:9: yaml: more than 1500000 values once aliases are expanded (the limit for registry files)",
        ),
    ],
)
def test_a_bad_registry_is_one_line_naming_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_registry(text, "r.yaml")
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_a_long_bad_value_is_never_repeated_in_full() -> None:
    value = "x" * 100_000
    for text in (
        WORKLOAD.replace("node: n1", f"node: {value}"),
        WORKLOAD + f"    address: {value}\n",
        f"workloads: []\n{value}: 1\n",
    ):
        with pytest.raises(ConfigError) as err:
            parse_registry(text, "r.yaml")
        assert len(str(err.value)) < 300, str(err.value)[:300]
