"""The worker VM's boot script as terraform sets it (workers.tf, `startup-script`): the
parts gpu_worker/vm/boot/*.sh joined in name order, as `cat gpu_worker/vm/boot/*.sh` does.
tests/worker/test_vm_files.py sources and lints this text; tests/terraform checks that the
instance templates carry exactly it."""

from __future__ import annotations

from pathlib import Path

BOOT = Path(__file__).resolve().parents[1] / "gpu_worker" / "vm" / "boot"


def boot_parts() -> list[Path]:
    return sorted(BOOT.glob("*.sh"), key=lambda path: path.name)


def boot_script() -> str:
    return "".join(path.read_text() for path in boot_parts())
