"""`python -m gpu_worker.fetch_model`: put the deployed profile's weights into LTXV_MODEL_DIR.

Run once by the VM boot script when the model-cache bucket is still empty; the script
then uploads the directory to the cache, so every later VM syncs from the bucket instead
of the hub. `tiny-random` is built locally instead of downloaded.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ltxv import logs
from ltxv.profiles import ModelProfile, all_profiles
from ltxv.settings import get_settings

from . import loading, tiny_random

log = logging.getLogger(__name__)


def fetch(profile: ModelProfile, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    source = profile.source
    if source["kind"] == "tiny-random":
        return tiny_random.ensure(directory)
    from huggingface_hub import hf_hub_download, snapshot_download

    weights_file = source.get("weights_file")
    if weights_file:
        # The single checkpoint plus the diffusers-format parts it does not hold, and the
        # transformer's and VAE's configs, which it does not carry either.
        checkpoint = hf_hub_download(source["repo"], weights_file, local_dir=directory)
        loading.fetch_model_configs(Path(checkpoint), directory)
        snapshot_download(
            source.get("text_encoder_repo") or source["repo"],
            local_dir=directory,
            allow_patterns=["model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*"],
        )
    else:
        snapshot_download(source["repo"], local_dir=directory)
    return directory


def main() -> int:
    settings = get_settings()
    logs.setup("fetch_model", settings.log_level)
    if not settings.model_dir:
        log.error("LTXV_MODEL_DIR is not set")
        return 2
    profile = all_profiles()[settings.worker_model]
    path = fetch(profile, Path(settings.model_dir))
    log.info("model fetched", extra={"model": profile.name, "path": str(path)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
