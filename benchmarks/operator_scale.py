"""Operator at scale: N CompressedModels applied at once against the API-server stand-in.

The operator runs as its own process (``modelpress operator``), exactly as in a pod, so
its CPU time and peak RSS are its own; the API-server stand-in (tests/operator) runs in
this process with Jobs completing instantly (the kubelet stand-in writes a real-shaped
summary), so what is measured is the control plane alone.

    .venv/bin/python benchmarks/operator_scale.py --models 10000
    .venv/bin/python benchmarks/operator_scale.py --models 1000 --max-concurrent-jobs 50

With ``--max-concurrent-jobs`` the operator runs under that cap (``maxConcurrentJobs``), so
most models wait Queued and each finished Job hands its slot to the next one.

Targets: 10,000 models to final status in <= 120 s on 2 cores, <= 4 writes per model
(not counting Events), operator peak RSS <= 400 MB; and per-model operator CPU flat from
1,000 to 10,000 models (the table's "operator CPU ms per model"). Each run is recorded
under its number of models (and cap, as ``1000-cap50``) in benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "operator"))

from cluster import Cluster, ContainerResult  # noqa: E402
from k8s_emulator import Audit  # noqa: E402

from modelpress import api  # noqa: E402
from modelpress.summary import JobSummary  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "operator_scale.json"
TARGETS = {"seconds_to_final": 120.0, "writes_per_model": 4.0, "peak_rss_mb": 400.0}  # for 10,000 models


def model(i: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": f"m{i:05d}", "namespace": "ml"},
        "spec": {
            "source": {"storageUri": f"s3://models/m{i}/model.onnx", "format": "onnx", "task": "classification"},
            "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
            "validation": {
                "dataset": {"storageUri": "s3://data/val.npz", "format": "npz"},
                "metric": "accuracy",
                "maxAccuracyDrop": {"absolute": 0.01},
            },
            "job": {"gpu": 1},
            "output": {"storageUri": "s3://models/out/"},
        },
    }


async def instant(job: Mapping[str, Any], root: Path) -> ContainerResult:
    rh = job["metadata"]["labels"]["modelpress.io/recipe-hash"]
    summary = JobSummary(
        outcome="Validated",
        reason="instant",
        recipeHash=rh,
        artifact={"storageUri": f"s3://models/out/{rh}", "sha256": "0" * 64, "sizeBytes": 1},
        results={"passed": True, "accuracyDrop": 0.0, "speedup": 2.0, "sizeRatio": 0.25},
    )
    return ContainerResult(0, summary.to_termination_message(), "Completed")


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def run(n: int, timeout: float, cap: int = 0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    with Cluster(work, runner=instant) as c:
        c.server.validate_builtin = False  # measure the operator, not the stand-in's schema validation
        env = dict(
            os.environ,
            KUBECONFIG=str(c.kubeconfig),
            MODELPRESS_JOB_TTL_SECONDS="3600",
            MODELPRESS_MAX_CONCURRENT_JOBS=str(cap),
        )
        op = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelpress.cli",
                "operator",
                "--namespace",
                "ml",
                "--standalone",
                "--metrics-port",
                "0",
                "--liveness-port",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "operator.log", "w"),
        )
        try:
            c.wait_for(
                "the operator to watch",
                lambda: any(a.verb == "watch" and a.resource == api.PLURAL for a in list(c.server.audit)),
                60,
            )
            time.sleep(0.5)
            base_audit = len(c.server.audit)
            cpu0, _ = proc_stats(op.pid)

            async def apply_all() -> None:
                for i in range(n):
                    c.server.create(api.GROUP, api.PLURAL, "ml", model(i), api.VERSION)

            start, standin_cpu0 = time.monotonic(), time.process_time()
            c.call(apply_all(), timeout=120)
            t_jobs = t_final = None
            while time.monotonic() - start < timeout:
                counts = c.call(_progress(c))
                if t_jobs is None and counts["jobs"] >= n:
                    t_jobs = time.monotonic() - start
                if counts["final"] >= n:
                    t_final = time.monotonic() - start
                    break
                time.sleep(0.25)
            time.sleep(1.0)  # let trailing events land in the audit
            cpu1, rss = proc_stats(op.pid)
            standin_cpu = time.process_time() - standin_cpu0
            audit: list[Audit] = list(c.server.audit)[base_audit:]
        finally:
            op.terminate()
            op.wait(30)
        counts = c.call(_progress(c))
    verbs = Counter((a.verb, a.resource + (f"/{a.subresource}" if a.subresource else "")) for a in audit)
    writes = sum(v for (verb, _), v in verbs.items() if verb not in ("get", "list", "watch"))
    event_writes = verbs.get(("create", "events"), 0)
    reads = sum(v for (verb, _), v in verbs.items() if verb in ("get", "list", "watch"))
    return {
        "models": n,
        "max_concurrent_jobs": cap,
        "seconds_to_all_jobs": None if t_jobs is None else round(t_jobs, 2),
        "seconds_to_final": None if t_final is None else round(t_final, 2),
        "models_final": counts["final"],
        "reads_per_model": round(reads / n, 2),
        "writes_per_model": round((writes - event_writes) / n, 2),
        "writes_per_model_with_events": round(writes / n, 2),
        "requests_by_verb": {f"{v} {r}": k for (v, r), k in sorted(verbs.items())},
        "operator_cpu_seconds": round(cpu1 - cpu0, 2),
        "operator_cpu_ms_per_model": round((cpu1 - cpu0) / n * 1000, 2),
        "peak_rss_mb": round(rss, 1),
        "standin_cpu_seconds": round(standin_cpu, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


async def _progress(c: Cluster) -> dict[str, int]:
    models = c.server.store.kind(api.GROUP, api.PLURAL)
    jobs = len(c.server.store.kind("batch", "jobs"))
    final = sum(1 for o in models if (o.get("status") or {}).get("phase") == "Validated")
    return {"jobs": jobs, "final": final}


def table(r: Mapping[str, Any]) -> str:
    rows = [
        ("models", r["models"], ""),
        ("maxConcurrentJobs (0: no cap)", r.get("max_concurrent_jobs", 0), ""),
        ("seconds until every model has a Job", r["seconds_to_all_jobs"], ""),
        ("seconds until every model is Validated", r["seconds_to_final"], f"<= {TARGETS['seconds_to_final']:.0f}"),
        ("API reads per model", r["reads_per_model"], ""),
        ("API writes per model (no Events)", r["writes_per_model"], f"<= {TARGETS['writes_per_model']:.0f}"),
        ("API writes per model (with Events)", r["writes_per_model_with_events"], ""),
        ("operator CPU seconds", r["operator_cpu_seconds"], ""),
        ("operator CPU ms per model", r["operator_cpu_ms_per_model"], "flat"),
        ("operator peak RSS MB", r["peak_rss_mb"], f"<= {TARGETS['peak_rss_mb']:.0f}"),
        ("API-server + kubelet stand-in CPU seconds", r["standin_cpu_seconds"], ""),
        ("machine load average (1 min) at the end", r["load_average_1m"], ""),
    ]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {value!s:>8}  {target}" for name, value, target in rows)


def run_key(result: Mapping[str, Any]) -> str:
    """Where a run is recorded: its number of models, and its cap when it had one."""
    cap = result.get("max_concurrent_jobs", 0)
    return f"{result['models']}-cap{cap}" if cap else str(result["models"])


def _order(key: str) -> tuple[int, int]:
    models, _, cap = key.partition("-cap")
    return int(models), int(cap or 0)


def record(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The results file with this run under :func:`run_key`, earlier runs of other sizes or caps kept."""
    try:
        runs = json.loads(path.read_text()).get("runs", {})
    except (OSError, ValueError, AttributeError):
        runs = {}
    runs[run_key(result)] = result
    return {"runs": dict(sorted(runs.items(), key=lambda kv: _order(kv[0])))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--max-concurrent-jobs", type=int, default=0, help="the operator's maxConcurrentJobs cap (0, the default: none)"
    )
    args = parser.parse_args(argv)
    result = run(args.models, args.timeout, args.max_concurrent_jobs)
    print(table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record(args.output, result), indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if result["models_final"] == args.models else 1


if __name__ == "__main__":
    sys.exit(main())
