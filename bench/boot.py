"""The parts of a worker VM's boot that can be timed without a GPU (docs/boot-budget.md).

    .venv/bin/python bench/boot.py [--gib 2] [--dir /tmp]

Writes a file of random bytes, reads it back cold (after dropping it from the page cache
with posix_fadvise, so the disk is read, not memory), compresses and decompresses it with
`zstd -T0` (the env archive's codec), saves it as a safetensors file of bf16 tensors and
loads it back cold with `safetensors.torch.load_file` (how diffusers reads weights), and
times `import torch` and `import diffusers` in fresh interpreters. Prints MiB/s per stage,
which docs/boot-budget.md scales to the sizes a real boot moves. The numbers are this
machine's (its disk, its cores): they stand in for the VM's only where the VM's disk or
CPUs are at least as fast; the doc says which rows are bounded by documented limits instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
CHUNK = 64 * MIB


def drop_cache(path: Path) -> None:
    """Evict a file's pages so the next read hits the disk (best effort, no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(label: str, size: int, fn) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    rate = size / MIB / seconds if size else 0.0
    print(f"{label:<44} {size / MIB:>9.0f} MiB {seconds:>8.2f} s {rate:>9.0f} MiB/s")
    return seconds


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            out.write(os.urandom(n))
            left -= n
        out.flush()
        os.fsync(out.fileno())


def read_all(path: Path) -> None:
    with path.open("rb", buffering=0) as src:
        while src.read(CHUNK):
            pass


def save_safetensors(path: Path, size: int) -> None:
    import torch
    from safetensors.torch import save_file

    # 256 MiB bf16 tensors (the real files hold tensors of a few to a few hundred MiB).
    per = 256 * MIB // 2
    count = max(1, size // (per * 2))
    tensors = {f"w{i}": torch.empty(per, dtype=torch.bfloat16).normal_() for i in range(count)}
    save_file(tensors, str(path))


def load_safetensors(path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    # Copy every tensor so that lazily mapped pages are really read.
    for tensor in tensors.values():
        tensor.clone()


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the test files")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write them")
    args = parser.parse_args()
    size = int(args.gib * 1024) * MIB
    work = Path(tempfile.mkdtemp(prefix="boot-bench-", dir=args.dir))
    print(f"cores: {os.cpu_count()}  dir: {work}")
    try:
        raw = work / "raw.bin"
        timed("write random + fsync", size, lambda: write_random(raw, size))
        drop_cache(raw)
        timed("read cold (page cache dropped)", size, lambda: read_all(raw))
        timed("read warm (page cache)", size, lambda: read_all(raw))

        if shutil.which("zstd"):
            archive = work / "raw.bin.zst"
            timed(
                "zstd -T0 -3 compress",
                size,
                lambda: subprocess.run(
                    ["zstd", "-q", "-T0", "-3", "-f", str(raw), "-o", str(archive)], check=True
                ),
            )
            out = work / "unpacked.bin"
            drop_cache(archive)
            timed(
                "zstd -d (output size; random data)",
                size,
                lambda: subprocess.run(
                    ["zstd", "-q", "-d", "-f", str(archive), "-o", str(out)], check=True
                ),
            )
            archive.unlink()
            out.unlink()
            # Real env archives hold compressible files: time a compressible stream too.
            text = work / "text.bin"
            with text.open("wb") as f:
                # About 3x compressible, like a tree of Python, .so and CUDA libraries.
                lines = b"import torch  # a line of python\n" * 1024
                while f.tell() < size:
                    f.write(lines + os.urandom(16 * 1024))
            archive = work / "text.bin.zst"
            subprocess.run(
                ["zstd", "-q", "-T0", "-3", "-f", str(text), "-o", str(archive)], check=True
            )
            drop_cache(archive)
            timed(
                "zstd -d compressible (output size)",
                text.stat().st_size,
                lambda: subprocess.run(
                    ["zstd", "-q", "-d", "-f", str(archive), "-o", str(work / "t.out")],
                    check=True,
                ),
            )
            print(f"  (compression ratio {text.stat().st_size / archive.stat().st_size:.1f}x)")
            for p in (text, archive, work / "t.out"):
                p.unlink()
        raw.unlink()

        weights = work / "weights.safetensors"
        save_safetensors(weights, size)
        drop_cache(weights)
        timed("safetensors load_file cold (bf16)", weights.stat().st_size,
              lambda: load_safetensors(weights))  # fmt: skip
        timed("safetensors load_file warm (bf16)", weights.stat().st_size,
              lambda: load_safetensors(weights))  # fmt: skip
        weights.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for module in ("torch", "diffusers"):
        print(
            f"{'import ' + module + ' (fresh interpreter)':<44} {import_seconds(module):>23.2f} s"
        )


if __name__ == "__main__":
    main()
