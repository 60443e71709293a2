"""Reading and writing storage URIs the way KServe does.

Downloads go through KServe's own storage library (``kserve_storage.Storage``), so a
URI that works here works for the InferenceService's storage initializer and the
same credentials/env (``AWS_ENDPOINT_URL``, ``S3_ENDPOINT``, ``S3_USE_HTTPS``,
``AWS_ACCESS_KEY_ID``, ...) apply. KServe has no upload API, so artifacts are written
with fsspec (s3fs for ``s3://``, the local filesystem for ``file://``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from modelpress.jobs.errors import JobInputError, first_line

log = logging.getLogger(__name__)


def configure_s3_endpoint() -> None:
    """Map KServe's S3 secret variables (S3_ENDPOINT + S3_USE_HTTPS) to AWS_ENDPOINT_URL.

    KServe's s3 secret annotations give a bare host in ``S3_ENDPOINT``; boto3, s3fs and
    kserve_storage all read ``AWS_ENDPOINT_URL``. An explicit ``AWS_ENDPOINT_URL`` wins.
    """
    endpoint = os.environ.get("S3_ENDPOINT")
    if endpoint and not os.environ.get("AWS_ENDPOINT_URL"):
        if "://" not in endpoint:
            scheme = "http" if os.environ.get("S3_USE_HTTPS", "1") in ("0", "false") else "https"
            endpoint = f"{scheme}://{endpoint}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint


def fetch(uri: str, dest: Path, field: str) -> Path:
    """Download ``uri`` into ``dest`` and return the local path of what it names.

    A URI naming one object gives that file; a prefix/directory gives ``dest``.
    ``field`` is the spec path used in error messages (e.g. ``source.storageUri``).
    """
    from kserve_storage import Storage

    configure_s3_endpoint()
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (%s) to %s", uri, field, dest)
    try:
        local = Path(Storage.download(uri, str(dest)))
    except Exception as e:  # kserve_storage raises bare Exception/RuntimeError subclasses
        raise JobInputError(field, f"cannot read {uri}: {first_line(e)}") from e
    single = local / uri.rstrip("/").rsplit("/", 1)[-1]
    if single.is_file():
        return single.resolve()
    if not any(local.iterdir()):
        raise JobInputError(field, f"cannot read {uri}: nothing found there")
    return local


def upload(local_dir: Path, uri: str, field: str = "output.storageUri") -> None:
    """Copy the contents of ``local_dir`` to the directory ``uri`` (created if needed)."""
    import fsspec

    configure_s3_endpoint()
    try:
        fs, root = fsspec.core.url_to_fs(uri, **_fs_options(uri))
        fs.makedirs(root, exist_ok=True)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            target = f"{root.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            log.info("uploading %s -> %s", path, target)
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
            fs.put_file(str(path), target)
    except Exception as e:
        raise JobInputError(field, f"cannot write {uri}: {first_line(e)}") from e


def _fs_options(uri: str) -> dict[str, Any]:
    """fsspec options so uploads reach the same endpoint KServe downloads from."""
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}
