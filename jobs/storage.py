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

import contextlib
import logging
import mimetypes
import os
import stat
import tarfile
import types
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from modelpress.jobs.errors import JobInputError, first_line
from modelpress.jobs.limits import format_size

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


def fetch(uri: str, dest: Path, field: str, unpack: bool = True) -> Path:
    """Download ``uri`` into ``dest`` and return the local path of what it names.

    A URI naming one object gives that file; a prefix/directory gives ``dest``.
    ``field`` is the spec path used in error messages (e.g. ``source.storageUri``).
    A single .tar/.tgz/.zip is left packed by the download (KServe's downloader would
    unpack it without bounds, in the process holding the storage credentials) and
    unpacked here with :func:`unpack_archive` unless ``unpack`` is False: the Job's
    credentialed download container passes False and the compress container unpacks.
    """
    from kserve_storage import Storage

    configure_s3_endpoint()
    dest.mkdir(parents=True, exist_ok=True)
    source = _local_uri(uri, field)
    log.info("downloading %s (%s) to %s", uri, field, dest)
    try:
        with _archives_kept():
            local = Path(Storage.download(source, str(dest)))
    except Exception as e:  # kserve_storage raises bare Exception/RuntimeError subclasses
        raise JobInputError(field, f"cannot read {uri}: {first_line(e)}") from e
    single = local / uri.rstrip("/").rsplit("/", 1)[-1]
    if single.is_file():
        # A file:// or pvc:// download is a link to the file; callers that parse it get the file
        # itself, the download step the link (its path stays inside ``dest``).
        found = single.resolve() if unpack and not _is_archive(single) else single
    elif not any(local.iterdir()):
        raise JobInputError(field, f"cannot read {uri}: nothing found there")
    else:
        found = local
    return unpack_archive(found, field) if unpack else found


# What KServe's downloader unpacks: one downloaded file whose name guesses to these types.
ARCHIVE_TYPES = ("application/x-tar", "application/zip")
# Bounds on unpacking an archive (a zip/tar bomb fails with a one-line error instead of
# filling the scratch volume until the kubelet evicts the pod without a word).
MAX_UNPACKED_BYTES_ENV = "MODELPRESS_MAX_UNPACKED_BYTES"
DEFAULT_MAX_UNPACKED_BYTES = 20 * 2**30
MAX_ARCHIVE_MEMBERS = 100_000


def _is_archive(path: Path) -> bool:
    return mimetypes.guess_type(path.name)[0] in ARCHIVE_TYPES


@contextlib.contextmanager
def _archives_kept() -> Iterator[None]:
    """KServe's downloader without its archive unpacking (``Storage._unpack_archive_file``).

    It unpacks every single .tar/.tgz/.zip it fetches with no bound on size or member
    count; in the Job that runs in the container holding the storage credentials. The
    replacement leaves the archive where the download put it (what the real one returns
    after unpacking is that same directory). KServe has no option for this, hence the
    swap of a private method; tests/jobs/test_storage.py fails if KServe renames it.

    Its http(s) download also gunzips a ``.tar.gz`` on the fly (``gzip.GzipFile`` over the
    response), unbounded, in the same credentialed process; the module's ``gzip`` is swapped
    for one that passes the bytes through as received, so the ``<name>.tar`` it writes holds
    the compressed stream and the compress step's bounded :func:`unpack_archive` (tarfile
    ``r:*`` detects gzip) does the decoding.
    """
    import kserve_storage.kserve_storage as kserve_module
    from kserve_storage import Storage

    original = Storage.__dict__["_unpack_archive_file"]
    original_gzip = kserve_module.gzip

    def keep(file_path: str, mimetype: str, target_dir: str | None = None) -> str:
        log.info("leaving archive %s packed for the compress step", file_path)
        return target_dir or os.path.dirname(file_path)

    Storage._unpack_archive_file = staticmethod(keep)
    kserve_module.gzip = types.SimpleNamespace(GzipFile=lambda fileobj: fileobj)
    try:
        yield
    finally:
        Storage._unpack_archive_file = original
        kserve_module.gzip = original_gzip


def max_unpacked_bytes() -> int:
    raw = os.environ.get(MAX_UNPACKED_BYTES_ENV)
    return int(raw) if raw else DEFAULT_MAX_UNPACKED_BYTES


def unpack_archive(path: Path, field: str) -> Path:
    """Unpack a downloaded archive the way KServe would, with bounds; other paths pass through.

    ``path`` is what :func:`fetch` found: an archive file, or a directory holding only
    one (an http(s) ``.tar.gz`` arrives as ``<name>.tar``). The archive is unpacked into
    its own directory, which is returned, and removed, as KServe does. Only regular files
    and directories are accepted, at most ``$MODELPRESS_MAX_UNPACKED_BYTES`` (20 GiB) and
    100,000 members; names are kept inside the directory (tarfile's ``data`` filter,
    zipfile's own name sanitising). Hand-written around the standard library because
    neither it nor KServe bounds what an archive expands to.
    """
    archive = path
    if path.is_dir():
        entries = list(path.iterdir())
        if len(entries) != 1:
            return path
        archive = entries[0]
    if not archive.is_file() or not _is_archive(archive):
        return path
    target = archive.parent
    limit = max_unpacked_bytes()
    log.info("unpacking %s (%s) into %s", archive.name, field, target)
    try:
        if mimetypes.guess_type(archive.name)[0] == "application/zip":
            _unzip(archive, target, field, limit)
        else:
            _untar(archive, target, field, limit)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        raise JobInputError(field, f"cannot unpack {archive.name}: {first_line(e)}") from e
    archive.unlink()
    return target


def _too_big(field: str, archive: Path, limit: int) -> JobInputError:
    return JobInputError(
        field, f"{archive.name} unpacks to more than {format_size(limit)}, the limit (set {MAX_UNPACKED_BYTES_ENV})"
    )


def _too_many(field: str, archive: Path) -> JobInputError:
    return JobInputError(field, f"{archive.name} holds more than {MAX_ARCHIVE_MEMBERS} members, the limit")


def _untar(archive: Path, target: Path, field: str, limit: int) -> None:
    total = 0
    with tarfile.open(archive, "r:*") as tar:
        for count, member in enumerate(tar, start=1):  # headers are read one at a time
            if count > MAX_ARCHIVE_MEMBERS:
                raise _too_many(field, archive)
            if not (member.isfile() or member.isdir()):
                raise JobInputError(
                    field, f"{archive.name}: member {member.name!r} is a link or device; only files and directories"
                )
            total += member.size
            if total > limit:
                raise _too_big(field, archive, limit)
            tar.extract(member, target, filter="data")


def _unzip(archive: Path, target: Path, field: str, limit: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise _too_many(field, archive)
        # zipfile never writes more than a member's declared file_size (it stops and
        # checks the CRC there), so the declared sizes bound what lands on disk.
        if sum(m.file_size for m in members) > limit:
            raise _too_big(field, archive, limit)
        for member in members:
            zf.extract(member, target)


class UnexpectedOutput(Exception):
    """The compress step left something other than the files it writes (see :func:`checked_outputs`)."""


def checked_outputs(local_dir: Path, allowed: Mapping[str, int]) -> list[str]:
    """The relative paths under ``local_dir`` to upload, after checking them all.

    The compress step parses hostile bytes, so its output is untrusted: only the
    expected files (``allowed``: relative path -> size limit in bytes) may be there,
    each a regular file within its limit, and nothing may be a symlink (one pointing
    at a credential file in the upload container would upload that file).
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(local_dir).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                if not any(a.startswith(rel + "/") for a in allowed):
                    raise UnexpectedOutput(f"unexpected directory {rel}")
                continue
            if not stat.S_ISREG(mode):
                raise UnexpectedOutput(f"{rel} is not a regular file (a symlink or device)")
            if rel not in allowed:
                raise UnexpectedOutput(f"unexpected file {rel}")
            size = path.lstat().st_size
            if size > allowed[rel]:
                raise UnexpectedOutput(f"{rel} has {size} bytes, more than the {allowed[rel]} allowed")
            found.append(rel)
    return sorted(found)


def upload(local_dir: Path, uri: str, field: str = "output.storageUri", files: list[str] | None = None) -> None:
    """Copy the contents of ``local_dir`` (or only ``files``, relative paths) to the directory ``uri``."""
    import fsspec

    configure_s3_endpoint()
    target_uri = _local_uri(uri, field)
    if files is None:
        files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    try:
        fs, root = fsspec.core.url_to_fs(target_uri, **_fs_options(target_uri))
        fs.makedirs(root, exist_ok=True)
        for rel in files:
            path = local_dir / rel
            target = f"{root.rstrip('/')}/{rel}"
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
    inside = mount.resolve()
    local = (mount / path).resolve()  # symlinks resolved: the check is on where the bytes are
    if not local.is_relative_to(inside):
        raise JobInputError(
            field, f"{uri}: the path leaves claim {claim!r} (through '..' or a symlink); name a file inside the claim"
        )
    if local.is_dir():
        _check_inside_claim(local, inside, uri, claim, field)
    return local.as_uri()


def _check_inside_claim(directory: Path, inside: Path, uri: str, claim: str, field: str) -> None:
    """Every entry under ``directory``, symlinks resolved, is inside the claim (``inside``).

    The downloader links a directory's entries and the loaders follow links, so a symlink
    in the claim pointing elsewhere in the pod (a mounted secret, /proc) would be read as
    part of the input. Linked directories are walked too, each real directory once.
    """
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real_dir = Path(dirpath).resolve()
        if real_dir in seen:  # a link cycle, or one directory linked twice
            dirnames.clear()
            continue
        seen.add(real_dir)
        for name in (*dirnames, *filenames):
            entry = Path(dirpath) / name
            if not entry.resolve().is_relative_to(inside):
                raise JobInputError(
                    field,
                    f"{uri}: {entry.relative_to(directory).as_posix()} is a symlink to outside claim {claim!r}; "
                    "copy the file into the claim instead",
                )
