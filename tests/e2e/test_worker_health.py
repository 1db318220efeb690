"""A standalone `worker` answers /healthz, /readyz and /metrics on WORKER_METRICS_PORT (what a
container healthcheck asks), and /readyz turns 503 when Temporal goes away."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from bot.devstack import DevServer
from tests.e2e.support import Service, base_env, free_port, http_status, wait_until, write_policies


async def test_worker_health_port(tmp_path: Path):
    server = DevServer(tmp_path / "temporal", port=free_port(), ui_port=free_port())
    await server.start()
    port = free_port()
    env = base_env(
        temporal_address=server.address,
        data_dir=tmp_path / "data",
        policies_dir=write_policies(tmp_path),
        worker_metrics_port=port,
        http_host="127.0.0.1",
    )
    worker = Service(["worker"], env, tmp_path / "logs", "worker")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{url}/readyz") == 200, 30, "worker /readyz 200")
        assert http_status(f"{url}/healthz") == 200
        with urllib.request.urlopen(f"{url}/metrics") as response:
            assert b"playbook_bot_step_duration_seconds" in response.read()
        await server.stop()
        wait_until(lambda: http_status(f"{url}/readyz") == 503, 20, "worker /readyz 503 without Temporal")
        try:
            urllib.request.urlopen(f"{url}/readyz")
        except urllib.error.HTTPError as exc:
            assert json.loads(exc.read())["checks"]["temporal"] != "ok"
    finally:
        worker.terminate()
        worker.close()
        await server.stop()
