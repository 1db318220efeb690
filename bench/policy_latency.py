"""Decision latency, embedded engine vs OPA REST (the fixture server), p50/p99 over N decisions.

    .venv/bin/python bench/policy_latency.py [-n 10000]

Rows, from the whole path down to its parts:
  embedded          EmbeddedEngine.decide: digest, pipe to the child, rego-cpp, parse
  embedded, smoke   the same over the acceptance checks' one-rule policy (if shared/ is there)
  REST (fake OPA)   OpaEngine.decide -> aiohttp -> uvicorn -> a fixed answer: the client and HTTP
                    path without OPA's own evaluation (a real OPA adds its own)
  pipe round trip   an empty request to the child: the isolation layer's own cost
  child code in-process   the child's own set_input (rego-cpp's C API) + evaluate, run in this
                    process: what the embedded engine costs without its isolation
  regopy in-process regopy as its documentation uses it, in this process (set_input(Input(...)),
                    query_bundle_entrypoint, the output's JSON): the floor the issue names
The embedded row and its floor are measured in 100 alternating rounds (about 50 ms each), so a
noisy spell on a shared machine (here the host takes bursts of ~100 ms) lands on both sides
alike. Both run on bot.eventloop's loop, as the bot's processes do. This one is a microbench of one process by nature (the embedded engine's
child process is part of what it measures). Figure for results.json: embedded p99 / regopy
in-process p99, goal <= 1.3. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from regopy import Input  # noqa: E402

from bench import results  # noqa: E402

from bot import eventloop  # noqa: E402
from bot.policy.embedded import EmbeddedEngine  # noqa: E402
from bot.policy.embedded_child import Child  # noqa: E402
from bot.policy.engine import RULES, entrypoint  # noqa: E402
from bot.policy.opa import OpaEngine  # noqa: E402
from bot.policy.rego_process import RegoProcess  # noqa: E402
from bot.policy.sources import read_sources  # noqa: E402
from tests.policy.fake_opa import FakeOpa, rules  # noqa: E402

POLICIES = ROOT / "policies"
SMOKE_POLICIES = ROOT.parent / "shared" / "acceptance" / "policies"

# A production restart: the longest common path of the shipped policy (approval required).
INPUT = {
    "playbook": {"name": "restart-service", "owner": "sre-oncall", "hash": "sha256:" + "a" * 64},
    "step": {
        "id": "restart",
        "action": "http.request",
        "impact": "high",
        "with": {"method": "POST", "url": "https://deploy.internal/v1/services/api/restart"},
    },
    "run": {"id": "restart-service-1", "trigger": "alertmanager", "requested_by": "alertmanager",
            "started_at": "2025-03-01T09:59:00Z"},
    "params": {"service": "api", "environment": "production"},
    "alert": {"labels": {"alertname": "ServiceDown", "service": "api", "severity": "page"},
              "annotations": {"summary": "api is down"}},
    "approvals": [],
    "now": "2025-03-01T10:00:00Z",
}


Call = Callable[[], Awaitable[object]]
ROUNDS = 100


async def measure(call: Call, n: int, warmup: int = 200) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def alternating(calls: dict[str, Call], n: int, rounds: int = ROUNDS) -> dict[str, list[float]]:
    """n samples of each call, taken in `rounds` alternating blocks: the ratio compares like with
    like even when the machine's load changes during the run."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(rounds):
        for name, call in calls.items():
            samples[name] += await measure(call, n // rounds, warmup=200 if index == 0 else 20)
    return samples


def fresh(i: int) -> dict:
    """INPUT as a new run asks it: production inputs carry the run id and the time, so every
    question is new to the decision cache; the floor is asked the same inputs."""
    return {**INPUT, "run": {**INPUT["run"], "id": f"restart-service-{i}"}}


def counting() -> Callable[[], dict]:
    n = iter(range(10**9))
    return lambda: fresh(next(n))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def row(name: str, samples: list[float], baseline: list[float]) -> str:
    """One line, with p99 as a ratio to regopy evaluated in-process (the floor under both paths)."""
    p50, p99 = pct(samples, 0.50), pct(samples, 0.99)
    mean, worst = statistics.fmean(samples) * 1000, max(samples) * 1000
    ratio = p99 / pct(baseline, 0.99)
    return f"| {name:<21} | {len(samples):>6} | {p50:>7.3f} | {p99:>7.3f} | {mean:>7.3f} | {worst:>7.2f} | {ratio:>9.2f} |"


async def main(n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    sources = read_sources(POLICIES)
    child = Child()  # the child's code, run here: the engine without its isolation
    child.handle({"op": "load", "modules": sources.modules, "data": sources.data,
                  "entrypoints": [entrypoint(rule) for rule in RULES]})
    plain, plain_bundle = child.rego, child.bundle  # regopy's own API over the same compiled policy
    decision_entrypoint = entrypoint("decision")
    floor_input, child_input = counting(), counting()

    async def regopy_in_process() -> object:
        assert plain is not None
        plain.set_input(Input(floor_input()))
        output = plain.query_bundle_entrypoint(plain_bundle, decision_entrypoint)
        if not output.ok():
            raise RuntimeError(f"regopy failed: {output}")
        return json.loads(str(output))

    async def child_in_process() -> object:
        return child.handle({"op": "eval", "entrypoint": decision_entrypoint, "input": child_input()})

    measured: list[tuple[str, list[float]]] = []
    async with EmbeddedEngine(POLICIES) as embedded:
        await embedded.load()
        decision = await embedded.decide(INPUT)
        assert decision.failure is None and decision.require_approval, decision
        assert (await regopy_in_process())["expressions"][0]["require_approval"] is True
        new = counting()
        paired = await alternating({"embedded": lambda: embedded.decide(new()),
                                    "regopy in-process": regopy_in_process,
                                    "child code in-process": child_in_process}, n)
        measured.append(("embedded", paired["embedded"]))
        measured.append(("embedded, repeated", await measure(lambda: embedded.decide(INPUT), n)))  # cache hits

    if SMOKE_POLICIES.is_dir():  # a one-rule policy: what the isolation layer costs around rego-cpp
        async with EmbeddedEngine(SMOKE_POLICIES) as smoke:
            await smoke.load()
            measured.append(("embedded, smoke", await measure(lambda: smoke.decide(INPUT), n)))

    # What the shipped policy answers for INPUT (tests/policy/oracle.py has the whole table).
    answer = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre-oncall"],
              "approval_timeout": "15m", "reasons": ["high impact step in production needs 1 approval(s) from sre-oncall"]}
    fake = FakeOpa(rules(decision=lambda _: answer))
    fake.start()
    try:
        async with OpaEngine(fake.url, timeout=5.0) as opa:
            decision = await opa.decide(INPUT)
            assert decision.failure is None and decision.require_approval, decision
            measured.append(("REST (fake OPA)", await measure(lambda: opa.decide(INPUT), n)))
    finally:
        fake.stop()

    process = RegoProcess()
    await process.start()
    try:
        measured.append(("pipe round trip", await measure(lambda: process.request({"op": "ping"}, 5.0), n)))
    finally:
        await process.stop()

    measured.append(("child code in-process", paired["child code in-process"]))
    baseline = paired["regopy in-process"]
    measured.append(("regopy in-process", baseline))

    print(f"decision latency over {n} sequential decisions (ms), shipped policies, approval path")
    print("| path                  |      n |     p50 |     p99 |    mean |     max | p99 ratio |")
    print("|-----------------------|--------|---------|---------|---------|---------|-----------|")
    print("\n".join(row(name, samples, baseline) for name, samples in measured))
    print("goals: embedded p99 <= 1.3x regopy in-process p99 (issue 15), REST p99 <= 5 ms")
    embedded_p99 = pct(dict(measured)["embedded"], 0.99)
    floor_p99 = pct(baseline, 0.99)
    layout = [{"note": f"one process (pid {os.getpid()}) and its policy child: EmbeddedEngine.decide vs "
                       f"regopy evaluated in this process as its documentation uses it, {n} sequential "
                       f"decisions each in {ROUNDS} alternating rounds, shipped policies, every input new (a new "
                       f"run id each: no decision-cache hits)"}]
    results.record(results.figure("policy decision p99, embedded vs regopy in-process, shipped policy",
                                  embedded_p99, floor_p99, "<= 1.3", "ms", layout))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="decisions per row (default 10000)")
    eventloop.run(main(parser.parse_args().n))
