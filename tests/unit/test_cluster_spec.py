"""One membership rule for every form the sources write a cluster in (dtf_app/cluster.py)."""

from __future__ import annotations

import pytest

from dtf_app.cluster import ClusterConfigError, derive_id, normalise_url, parse_peer_entries, resolve

K8S = ("dtf-ha-coordinator-0.dtf-ha-coordinator-headless:8080,dtf-ha-coordinator-1.dtf-ha-coordinator-headless:8080,"
       "dtf-ha-coordinator-2.dtf-ha-coordinator-headless:8080")


def test_statefulset_list_includes_self_and_ids_are_pod_names() -> None:
    entries = parse_peer_entries(K8S, "HIGH_AVAILABILITY_PEERS")
    assert [i for i, _ in entries] == ["dtf-ha-coordinator-0", "dtf-ha-coordinator-1", "dtf-ha-coordinator-2"]
    spec = resolve(entries, node_id="dtf-ha-coordinator-1", advertise_url="http://10.0.0.5:8080", includes_self=True)
    assert spec.self_id == "dtf-ha-coordinator-1" and len(spec.members) == 3 and spec.quorum == 2


def test_loopback_entries_recognise_self_by_advertised_url() -> None:
    entries = parse_peer_entries("127.0.0.2:9001,127.0.0.3:9001,127.0.0.4:9001")
    assert entries[0] == ("127.0.0.2:9001", "http://127.0.0.2:9001")
    spec = resolve(entries, node_id="pod-name", advertise_url="http://127.0.0.3:9001", includes_self=True)
    assert spec.self_id == "127.0.0.3:9001"
    with pytest.raises(ClusterConfigError, match="not in the list"):
        resolve(entries, node_id="pod-name", advertise_url="http://127.0.0.9:9001", includes_self=True)


def test_design_yaml_peers_exclude_self() -> None:
    entries = parse_peer_entries([{"id": "coordinator-2", "host": "coordinator-2.example.com", "port": 8080},
                                  {"id": "coordinator-3", "host": "coordinator-3.example.com", "port": 8080}])
    spec = resolve(entries, node_id="coordinator-1", advertise_url="coordinator-1.example.com:8080",
                   includes_self=False)
    assert sorted(spec.members) == ["coordinator-1", "coordinator-2", "coordinator-3"]
    assert spec.members["coordinator-1"] == "http://coordinator-1.example.com:8080"


def test_cli_peers_may_or_may_not_include_self() -> None:
    with_self = parse_peer_entries("a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3")
    assert resolve(with_self, node_id="b", advertise_url="http://127.0.0.1:2").self_id == "b"
    without = parse_peer_entries("b=http://127.0.0.1:2,c=http://127.0.0.1:3")
    spec = resolve(without, node_id="a", advertise_url="http://127.0.0.1:1")
    assert dict(spec.members) == {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2", "c": "http://127.0.0.1:3"}


def test_single_node_is_a_one_member_cluster() -> None:
    spec = resolve([], node_id="solo", advertise_url="http://127.0.0.1:8080")
    assert spec.is_single and spec.members == {"solo": "http://127.0.0.1:8080"}


@pytest.mark.parametrize(("value", "fragment"), [
    ("a=http://h:1,a=http://h:2", "appears twice"),
    ("a=http://h:1,b=http://h:1", "appears twice"),
    ("ftp://h:1", "http:// or https://"),
    ("a=http://h:99999", "invalid port"),
    ("a=http://h:1/path", "just scheme"),
])
def test_misconfigured_lists_are_one_clear_error(value: str, fragment: str) -> None:
    with pytest.raises(ClusterConfigError, match=fragment):
        resolve(parse_peer_entries(value), node_id="x", advertise_url="http://127.0.0.1:5")


def test_url_forms() -> None:
    assert normalise_url("host") == "http://host:8080"
    assert normalise_url("https://h") == "https://h:443"
    assert derive_id("http://[::1]:80") == "::1:80"
    with pytest.raises(ClusterConfigError, match="needs a host"):
        parse_peer_entries([{"port": 1}])
