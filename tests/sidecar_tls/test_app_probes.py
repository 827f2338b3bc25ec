"""The app's rewritten probes: the sidecar's status port calls the app and answers its status."""

from __future__ import annotations

import asyncio
import json

import pytest

from meshward_common.errors import ConfigError
from sidecar_tls.app_probes import AppProbe, parse_probers, serve_app_probes


async def app_server(statuses: dict[str, int]) -> tuple[asyncio.Server, int, list[str]]:
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        seen.append(head)
        path = head.split(" ", 2)[1]
        writer.write(f"HTTP/1.1 {statuses.get(path, 404)} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def get(port: int, path: str, method: str = "GET") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


async def test_the_status_port_answers_with_the_apps_own_status() -> None:
    server, app_port, seen = await app_server({"/ready": 200, "/live": 500})
    probers = parse_probers(
        json.dumps(
            {
                "/app-health/app/readyz": {
                    "httpGet": {
                        "path": "/ready",
                        "port": app_port,
                        "httpHeaders": [{"name": "X-Probe", "value": "1"}],
                    }
                },
                "/app-health/app/livez": {
                    "httpGet": {"path": "/live", "port": app_port},
                    "timeoutSeconds": 2,
                },
                "/app-health/gone/readyz": {"httpGet": {"path": "/", "port": 1}},
            }
        )
    )
    status = await serve_app_probes(probers, "127.0.0.1", "127.0.0.1", 0)
    try:
        assert await get(status.port, "/app-health/app/readyz") == 200
        assert await get(status.port, "/app-health/app/livez") == 500
        assert await get(status.port, "/app-health/gone/readyz") == 503  # the app does not answer
        assert await get(status.port, "/app-health/other/readyz") == 404
        assert await get(status.port, "/app-health/app/readyz", "POST") == 400
        assert "X-Probe: 1" in seen[0]
        assert seen[0].startswith("GET /ready HTTP/1.1")
    finally:
        await status.cleanup()
        server.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "JSON object"),
        ('{"/x": {"httpGet": {"port": 1}}}', "/app-health/"),
        ('{"/app-health/a/readyz": {}}', "no httpGet"),
        ('{"/app-health/a/readyz": {"httpGet": {"port": "http"}}}', "not a port number"),
        ('{"/app-health/a/readyz": {"httpGet": {"port": 1, "scheme": "TCP"}}}', "scheme"),
        ('{"/app-health/a/readyz": {"httpGet": {"port": 1, "path": "a b"}}}', "absolute path"),
        (
            '{"/app-health/a/readyz": {"httpGet": {"port": 1, "httpHeaders": [{"name": "a:b"}]}}}',
            "header",
        ),
        (
            '{"/app-health/a/readyz": {"httpGet": {"port": 1}, "timeoutSeconds": 0}}',
            "timeoutSeconds",
        ),
        ("{", "not JSON"),
    ],
)
def test_bad_probers_are_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_probers(text)


def test_no_probers_is_no_server() -> None:
    assert parse_probers("") == {}
    assert parse_probers('{"/app-health/a/readyz": {"httpGet": {"port": 8080}}}') == {
        "/app-health/a/readyz": AppProbe("/", 8080)
    }


# ---------------------------------------------------------------------------------------------
# In a real pod, behind istio-init's rules: why the probes are rewritten, and that they work.

PROBE_SERVER = r"""
import asyncio, sys
from sidecar_tls.app_probes import parse_probers, serve_app_probes
async def main():
    await serve_app_probes(parse_probers(sys.argv[1]), sys.argv[2], "0.0.0.0", 15020)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _http_status(url: str) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - a pod on our bridge
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


@pytest.mark.netns
def test_in_a_captured_pod_the_kubelets_probe_reaches_the_app_only_through_15020() -> None:
    import select
    import subprocess
    import sys

    from tests.harness.pods import add_intercepted_pod, pod_network

    with pod_network("mwap", "10.213.128.0/24") as net:
        pod = add_intercepted_pod(net, "probed")
        app = net.spawn(
            pod,
            [
                sys.executable,
                "-m",
                "http.server",
                "9080",
                "--bind",
                "0.0.0.0",
                "--directory",
                "/",
            ],
            uid=1000,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probers = json.dumps(
            {
                "/app-health/app/readyz": {"httpGet": {"path": "/", "port": 9080}},
                "/app-health/app/livez": {"httpGet": {"path": "/missing", "port": 9080}},
            }
        )
        status = net.spawn(
            pod,
            [sys.executable, "-c", PROBE_SERVER, probers, pod.ip],
            uid=1337,
            stdout=subprocess.PIPE,
        )
        assert status.stdout is not None
        net_stdout = status.stdout
        ready, _, _ = select.select([status.stdout], [], [], 20)
        assert ready, "the status server did not start"
        assert status.stdout.readline().strip() == b"ready"
        from tests.harness.kube import wait_for

        assert app.poll() is None
        # The kubelet's probe of the rewritten path: the app's own status, through the sidecar.
        wait_for(
            "the app probe",
            lambda: _http_status(f"http://{pod.ip}:15020/app-health/app/readyz") == 200,
        )
        assert _http_status(f"http://{pod.ip}:15020/app-health/app/livez") == 404
        # The original probe, straight at the app's port, is captured (redirected to 15006,
        # where no sidecar listens in this test): it never reaches the app.
        assert _http_status(f"http://{pod.ip}:9080/") is None
        net_stdout.close()
