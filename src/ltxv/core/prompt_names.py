"""Where prompt files and their receipts live in the prompts bucket: names only, no
dependencies, shared by the intake that reads the files and the client that drops them."""

from __future__ import annotations

INCOMING = "incoming/"
RECEIPTS = "receipts/"
SUFFIXES = (".json", ".jsonl")


def receipt_name(object_name: str) -> str:
    return RECEIPTS + object_name.removeprefix(INCOMING) + ".json"


RESULTS = "results/"
# Custom metadata on a manifest: the prompt-file generation it describes (a name dropped
# again is a new batch; the newest upload's manifest replaces an older one's, never back).
MANIFEST_GENERATION = "ltxv-source-generation"


def manifest_name(object_name: str) -> str:
    """Where a prompt file's batch manifest goes once every job of it has settled."""
    return RESULTS + object_name.removeprefix(INCOMING) + ".jsonl"
