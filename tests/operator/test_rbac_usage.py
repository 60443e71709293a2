"""The exact API surface the operator uses (what its Role must grant, and no more)."""

from __future__ import annotations

from pathlib import Path

from rbac import NAMESPACE, observed_rbac

EXPECTED = [
    ("create", "", "configmaps", "", NAMESPACE),
    ("create", "", "events", "", NAMESPACE),
    ("create", "batch", "jobs", "", NAMESPACE),
    ("list", "", "events", "", NAMESPACE),  # the pod check's FailedCreate Events
    ("list", "", "namespaces", "", ""),
    ("list", "", "pods", "", NAMESPACE),
    ("list", "batch", "jobs", "", NAMESPACE),
    ("list", "modelpress.io", "compressedmodels", "", NAMESPACE),
    ("patch", "modelpress.io", "compressedmodels", "status", NAMESPACE),
    ("watch", "", "namespaces", "", ""),
    ("watch", "batch", "jobs", "", NAMESPACE),
    ("watch", "modelpress.io", "compressedmodels", "", NAMESPACE),
]


def test_operator_uses_exactly_this_api_surface(tmp_path: Path) -> None:
    used = observed_rbac(tmp_path)
    # `get` appears only on retries after a conflict or an AlreadyExists; allow, never require it.
    optional = {("get", g, r, s, n) for (_, g, r, s, n) in EXPECTED if r in ("jobs", "configmaps", "compressedmodels")}
    assert set(used) - optional == set(EXPECTED), used
    assert not any(r == "compressedmodels" and v in ("update", "patch") and s == "" for v, _, r, s, _ in used)
    assert not any(r == "secrets" for _, _, r, _, _ in used)
