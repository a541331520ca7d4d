"""Where prompt files and their receipts live in the prompts bucket: names only, no
dependencies, shared by the intake that reads the files and the client that drops them."""

from __future__ import annotations

INCOMING = "incoming/"
RECEIPTS = "receipts/"
SUFFIXES = (".json", ".jsonl")


def receipt_name(object_name: str) -> str:
    return RECEIPTS + object_name.removeprefix(INCOMING) + ".json"
