"""The compiled transformer blocks, shared by every VM of a deployment through Cloud Storage.

Inductor keeps what it compiles in its cache directory (TORCHINDUCTOR_CACHE_DIR), which
survives a worker's restarts on one VM: the systemd unit points it at /var/cache/ltxv. A
new VM starts with that directory empty and would compile again before its first job.
So the first worker to compile for a key uploads its cache directory as one archive,
create-only, and later VMs unpack it before their warm-up:

    gs://PREFIX-model-cache/compile-cache/<profile>/<key>.tar.gz

The key covers what compiled code depends on (torch, triton and diffusers versions, the
GPU model, the profile's dtype and fit). Inductor checks every entry against its own finer
key on use, so an archive that no longer matches costs only the compile it failed to save.
The archive comes from our own bucket, written by our own workers; it is unpacked with
tarfile's "data" filter all the same (no links out of the directory, no devices), into a
staging folder whose files are renamed into place one by one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc

from ltxv.core.profiles import ModelProfile
from ltxv.core.signing import split_gs_uri

log = logging.getLogger(__name__)


def cache_key(profile: ModelProfile, device: str) -> str:
    """What the compiled code depends on, as a short hash (the inputs are logged)."""
    import diffusers
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    facts = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "diffusers": diffusers.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "dtype": profile.dtype,
        "fit": profile.fit,
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    log.debug("compile cache key", extra={"key": digest, "facts": facts})
    return digest


def local_cache_dir() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


class CompileCache:
    """Restore Inductor's cache directory from `uri` before compiling; publish it after."""

    def __init__(self, storage_client: Any, uri: str, profile: str) -> None:
        self.client = storage_client
        self.bucket, prefix = split_gs_uri(uri.rstrip("/") + "/")
        self.prefix = f"{prefix}{profile}/"

    def _blob(self, key: str) -> Any:
        return self.client.bucket(self.bucket).blob(f"{self.prefix}{key}.tar.gz")

    @staticmethod
    def _marker(key: str) -> Path:
        return local_cache_dir() / f".ltxv-compile-{key}"

    def restore(self, key: str) -> bool:
        """Unpack the shared archive into the local cache (once per VM); True if it did."""
        if self._marker(key).exists():
            return False  # this VM has it already (a restart): nothing to fetch
        directory = local_cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as archive:
            try:
                self._blob(key).download_to_file(archive, timeout=300)
            except gexc.NotFound:
                log.info("no shared compile cache yet", extra={"key": key})
                return False
            archive.seek(0)
            _unpack(archive, directory)
        self._marker(key).touch()
        log.info("compile cache restored", extra={"key": key, "directory": str(directory)})
        return True

    def publish(self, key: str) -> bool:
        """Upload the local cache as the key's archive unless one is there; True if it did."""
        directory = local_cache_dir()
        if self._marker(key).exists():
            return False  # restored from the archive, or published before
        with tempfile.NamedTemporaryFile(suffix=".tar.gz") as archive:
            with tarfile.open(archive.name, mode="w:gz") as tar:
                for path in sorted(directory.iterdir()):
                    if not path.name.startswith((".ltxv-compile-", ".restore-")):
                        tar.add(path, arcname=path.name)
            size = os.path.getsize(archive.name)
            try:
                # Create-only: the first worker's archive stays; the others' are refused.
                self._blob(key).upload_from_filename(
                    archive.name, content_type="application/gzip", if_generation_match=0
                )
            except gexc.PreconditionFailed:
                published = False
            else:
                published = True
        self._marker(key).touch()
        log.info(
            "compile cache published" if published else "compile cache already published",
            extra={"key": key, "bytes": size},
        )
        return published


def _unpack(archive: Any, directory: Path) -> None:
    """Unpack beside the cache, then move each file into place with an atomic rename: the
    workers of a multi-GPU VM restore at the same time, and Inductor must never read a
    file another worker is still writing."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".restore-") as staging:
        with tarfile.open(fileobj=archive, mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
        for path in sorted(Path(staging).rglob("*")):
            if path.is_file():
                target = directory / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
