"""`modelpress operator` as it runs in its pod: a process with liveness and metrics endpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster import Cluster, Gate, sample_model
from helpers import free_port, wait_http


def test_operator_process_cluster_wide_with_probes(tmp_path: Path) -> None:
    metrics_port, liveness_port = free_port(), free_port()
    with Cluster(tmp_path, runner=Gate()) as c:
        env = dict(os.environ, KUBECONFIG=str(c.kubeconfig))
        log_path = tmp_path / "operator.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelpress.cli",
                "operator",
                "--all-namespaces",
                "--standalone",
                "--metrics-port",
                str(metrics_port),
                "--liveness-port",
                str(liveness_port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            c.apply_model(sample_model())
            c.wait_phase("digits", "Validated", 60)
            # Cluster-wide: the operator watched the collection across namespaces.
            assert any(
                a.verb == "watch" and a.resource == "compressedmodels" and a.namespace == "" for a in c.server.audit
            )
            assert not any(a.resource == "namespaces" for a in c.server.audit)
            assert wait_http(f"http://127.0.0.1:{liveness_port}/healthz", proc=proc, log=log_path)[0] == 200
            _, text = wait_http(f"http://127.0.0.1:{metrics_port}/metrics", proc=proc, log=log_path)
            assert 'modelpress_models{phase="Validated"} 1.0' in text
            assert "modelpress_jobs_created_total 1.0" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            log.close()
        assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]


def operator_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``modelpress operator ARGS`` with ``env`` over this environment, as a process."""
    return subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "operator", *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_operator_command_rejects_bad_settings() -> None:
    helped = operator_command("--help", MODELPRESS_DEFAULT_GPU="lots")
    assert helped.returncode == 0 and "--max-concurrent-jobs" in helped.stdout
    out = operator_command("-n", "ml", MODELPRESS_DEFAULT_GPU="lots")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "MODELPRESS_DEFAULT_GPU" in out.stderr


def test_operator_command_rejects_bad_extra_labels() -> None:
    from_env = operator_command("-n", "ml", MODELPRESS_EXTRA_LABELS="team=search ml")
    assert from_env.returncode == 2 and "Traceback" not in from_env.stderr
    assert (
        "MODELPRESS_EXTRA_LABELS must be comma-separated key=value Kubernetes labels, got 'team=search ml'"
        in from_env.stderr
    )
    flagged = operator_command("-n", "ml", "--extra-label", "team")
    assert flagged.returncode == 2 and "Traceback" not in flagged.stderr
    assert "--extra-label must be comma-separated key=value Kubernetes labels, got 'team'" in flagged.stderr
