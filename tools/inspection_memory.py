"""Peak memory of one input check (intake's media_probe.probe) on the largest inputs the
deployed profiles allow: a 16-megapixel PNG, progressive and baseline CMYK JPEG, and a
16-megapixel H.264 video. Each is measured in a fresh process, as the rise of its peak
resident set (VmHWM, reset just before the check) over what it held with the bytes read.

    PYTHONPATH=src python -m tools.inspection_memory [--no-draft]

--no-draft measures the JPEG as it was decoded before intake asked Pillow for 1/8 scale.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = 4096  # 4096 x 4096 = max_input_pixels (16777216)


def make(kind: str) -> bytes:
    import av
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    if kind == "video":
        out = io.BytesIO()
        with av.open(out, "w", format="mp4") as muxer:
            stream = muxer.add_stream("libx264", rate=8, options={"preset": "ultrafast"})
            stream.width = stream.height = SIDE
            stream.pix_fmt = "yuv420p"
            for _ in range(3):
                pixels = rng.integers(0, 256, (SIDE, SIDE, 3), np.uint8)
                muxer.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            muxer.mux(stream.encode())
        return out.getvalue()
    # Noise on a smooth ramp: big files (near the byte limit), still real images.
    ramp = np.add.outer(np.arange(SIDE), np.arange(SIDE)) % 256
    noise = rng.integers(0, 64, (SIDE, SIDE), np.uint8)
    band = (ramp + noise).astype(np.uint8)
    out = io.BytesIO()
    if kind == "png":
        Image.fromarray(np.stack([band, band[::-1], band.T], -1)).save(out, "PNG")
    else:
        cmyk = np.stack([band, band[::-1], band.T, noise], -1)
        progressive = kind == "jpeg"
        Image.fromarray(cmyk, "CMYK").save(out, "JPEG", quality=95, progressive=progressive)
    return out.getvalue()


def measure(path: str, no_draft: bool) -> dict[str, object]:
    from PIL import JpegImagePlugin

    from ltxv.core.profiles import all_profiles
    from ltxv.intake.media_probe import probe

    if no_draft:
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None  # type: ignore
    limits = all_profiles()["ltx-video-2b-distilled"].conditioning
    assert limits is not None
    data = Path(path).read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _vm("VmRSS")
    started = time.monotonic()
    info = probe(data, limits, deadline=time.monotonic() + 60)
    return {
        "bytes": len(data),
        "content_type": info.content_type,
        "extra_peak_mib": round((_vm("VmHWM") - before) / 1024, 1),
        "seconds": round(time.monotonic() - started, 2),
    }


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise RuntimeError(field)


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2], "--no-draft" in sys.argv)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("png", "jpeg", "baseline-jpeg", "video"):
            path = Path(tmp) / kind
            path.write_bytes(make(kind))
            args = [sys.executable, "-m", "tools.inspection_memory", "--one", str(path)]
            result = subprocess.run(args + sys.argv[1:], capture_output=True, text=True, check=True)
            sys.stdout.write(f"{kind}: {result.stdout}")


if __name__ == "__main__":
    main()
