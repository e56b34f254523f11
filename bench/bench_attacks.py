"""A victim's latency beside hostile clients (docs/benchmarks.md, issue 24):

    .venv/bin/python -m bench.bench_attacks [--attacks tasks_query,v2_bytes,...] [--rounds 3] \\
        [--phase-s 3] [--warmup-s 2] [--server-flags "..."] [--repo CHECKOUT] [--out FILE]

Starts ``python -m server`` on the demo model (REST and gRPC on free ports, 127.0.0.1, a
512 MiB memory budget, its defaults otherwise: ``--server-flags`` adds more). The victim sends
``POST /predict?tasks=semseg`` of a 128 px PNG (demo/samples/scene_0.png) back to back, one
at a time, on one connection. For each attack (bench/attacks.py), A/B alternating phases, the
order flipped every round: quiet (the victim alone for ``--phase-s``) and attacked (the attack
started, ``--warmup-s`` for it to get going, then the victim for ``--phase-s``, then the attack
stopped; the attack runs in a process of its own at nice 19: bench/attacks.py). ``--repo``
runs another checkout's server with the same flags (e.g. the code before a change). Printed per
attack: the victim's median and worst latency, quiet and attacked, the
ratio of the medians, the victim's answers that were not 200, what the attack's tries ended in,
and the server's peak RSS while attacked (VmHWM, reset before each attacked phase).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.attacks import ATTACKS, Log, Running, Target, victim_loop
from tests.processes import free_port

REPO = Path(__file__).resolve().parent.parent
VICTIM_IMAGE = REPO / "demo" / "samples" / "scene_0.png"
SERVER_FLAGS = ("--providers", "cpu", "--memory-budget-mb", "512", "--log-level", "warning")


def start_server(flags: list[str], log: Path, repo: Path = REPO) -> tuple[subprocess.Popen, Target]:
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "server", "--port", str(port), "--grpc-port", str(grpc_port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, *SERVER_FLAGS, *flags], stdout=output, stderr=subprocess.STDOUT, cwd=repo
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                model = httpx.get(url + "/v1/models", timeout=10).json()["default_model"]
                return process, Target(url, f"127.0.0.1:{grpc_port}", model)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server was not ready in 180 s")


def peak_rss_mb(pid: int, reset: bool = False) -> float:
    """VmHWM (MiB); ``reset``: set it back to the current RSS first."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def victim_phase(target: Target, body: bytes, seconds: float, log: Log) -> list[float]:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return victim_loop(target, body, log, stop)
    finally:
        timer.cancel()


def measure(attack, target: Target, pid: int, args) -> dict:
    """Alternating quiet and attacked phases of one attack; the victim's latencies of each."""
    body = VICTIM_IMAGE.read_bytes()
    quiet, attacked, peaks, log = [], [], [], Log()
    for round_index in range(args.rounds):
        for phase in ("quiet", "attacked") if round_index % 2 == 0 else ("attacked", "quiet"):
            if phase == "quiet":
                quiet += victim_phase(target, body, args.phase_s, Log())
                continue
            peak_rss_mb(pid, reset=True)
            running = Running(attack, target, log, own_process=True)
            time.sleep(max(args.warmup_s, attack.warmup_s))
            attacked += victim_phase(target, body, args.phase_s, log)
            peaks.append(peak_rss_mb(pid))
            running.stop()
    victim = log.outcomes("victim")
    return {
        "attack": attack.name,
        "what": attack.what,
        "quiet_ms": [round(s * 1000, 2) for s in quiet],
        "attacked_ms": [round(s * 1000, 2) for s in attacked],
        "victim_not_200": sum(n for status, n in victim.items() if status != "200"),
        "attack_outcomes": dict(log.outcomes()),
        "peak_rss_mb": round(max(peaks), 1),
    }


def row(result: dict) -> str:
    quiet, attacked = result["quiet_ms"], result["attacked_ms"]
    ratio = statistics.median(attacked) / statistics.median(quiet)
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(result["attack_outcomes"].items()))
    return (
        f"| {result['what']} | {statistics.median(quiet):.1f} ({max(quiet):.0f}) "
        f"| {statistics.median(attacked):.1f} ({max(attacked):.0f}) | {ratio:.2f}x "
        f"| {len(attacked)} ({result['victim_not_200']}) | {outcomes} "
        f"| {result['peak_rss_mb']:.0f} |"
    )


HEADER = (
    "| while other clients loop on | victim quiet: median (worst) ms | attacked: median (worst) ms "
    "| ratio of medians | victim requests attacked (not 200) | the attack's tries ended in "
    "| server peak RSS attacked, MiB |\n| --- | --- | --- | --- | --- | --- | --- |"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated names")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phase-s", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--server-flags", default="", help="more python -m server flags")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout whose server runs (before/after)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    log = Path(tempfile.mkdtemp(prefix="bench-attacks-")) / "server.log"
    process, target = start_server(shlex.split(args.server_flags), log, args.repo)
    results = []
    try:
        print(HEADER, flush=True)
        for name in args.attacks.split(","):
            results.append(measure(ATTACKS[name], target, process.pid, args))
            print(row(results[-1]), flush=True)
    finally:
        process.terminate()
        process.wait(60)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
