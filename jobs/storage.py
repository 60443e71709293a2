"""Reading and writing storage URIs the way KServe does.

Downloads go through KServe's own storage library (``kserve_storage.Storage``), so a
URI that works here works for the InferenceService's storage initializer and the
same credentials/env (``AWS_ENDPOINT_URL``, ``S3_ENDPOINT``, ``S3_USE_HTTPS``,
``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``STORAGE_EMULATOR_HOST``, ...)
apply. KServe has no upload API, so artifacts are written with fsspec (s3fs for
``s3://``, gcsfs for ``gs://``, the local filesystem for ``file://``).

``pvc://<claim>/<path>`` is not a download: as KServe's storage initializer does for
an InferenceService, the operator mounts each claim into the Job's pod (at
``$MODELPRESS_PVC_ROOT/<claim>``) and the job reads and writes the mounted files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from modelpress.jobs.errors import JobInputError, first_line

log = logging.getLogger(__name__)

PVC_SCHEME = "pvc://"
# Where the operator mounts claims (operator/job_builder.py sets this env var to the
# mount root it uses); the default is KServe's own PVC mount prefix.
PVC_ROOT_ENV = "MODELPRESS_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


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
    source = _local_uri(uri, field)
    log.info("downloading %s (%s) to %s", uri, field, dest)
    try:
        local = Path(Storage.download(source, str(dest)))
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
    target_uri = _local_uri(uri, field)
    try:
        fs, root = fsspec.core.url_to_fs(target_uri, **_fs_options(target_uri))
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
    if uri.startswith("gs://"):
        # google-cloud-storage (KServe's downloader) talks to STORAGE_EMULATOR_HOST
        # anonymously; gcsfs must do the same instead of looking for Google credentials.
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            endpoint = emulator if "://" in emulator else f"http://{emulator}"
            return {"endpoint_url": endpoint, "token": "anon"}
    return {}


def pvc_root() -> Path:
    """Where PVC claims are mounted in this process (``$MODELPRESS_PVC_ROOT`` or /mnt/pvc)."""
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def _local_uri(uri: str, field: str) -> str:
    """``pvc://<claim>/<path>`` as the ``file://`` URI of its mounted copy; others unchanged."""
    if not uri.startswith(PVC_SCHEME):
        return uri
    claim, _, path = uri.removeprefix(PVC_SCHEME).partition("/")
    mount = pvc_root() / claim
    if not claim or not mount.is_dir():
        raise JobInputError(
            field,
            f"{uri}: claim {claim!r} is not mounted at {mount}; the operator mounts every claim named by a "
            f"pvc:// URI in the spec, and local runs set {PVC_ROOT_ENV} to the directory holding the claims",
        )
    local = (mount / path).resolve()
    if not local.is_relative_to(mount.resolve()):
        raise JobInputError(field, f"{uri}: the path leaves claim {claim!r}; remove the '..' parts")
    return local.as_uri()
