"""The earlier frames of an extend's joined video (gpu_worker/condition_frames.fit): cropped
to the job's aspect ratio and resized as conditioning frames are, without blur or CRF."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gpu_worker.condition_frames import fit


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_frame_of_the_size_already_is_left_exactly_as_it_is():
    frame = noise(96, 64)
    assert np.array_equal(fit(Image.fromarray(frame), 64, 96), frame)


def test_a_wider_frame_keeps_its_centered_part():
    frame = noise(150, 64)
    assert np.array_equal(fit(Image.fromarray(frame), 64, 96), frame[:, 27:123])  # (150-96)//2


def test_a_taller_frame_keeps_its_centered_rows():
    frame = noise(96, 100)
    assert np.array_equal(fit(Image.fromarray(frame), 64, 96), frame[18:82])


def test_twice_the_size_is_halved_by_averaging_each_two_by_two_block():
    # Bilinear, align_corners False, at exactly half: each output pixel samples the middle
    # of a 2 x 2 block, i.e. its mean (no blur, no compression on the way).
    frame = noise(192, 128).astype(np.float64)
    expected = frame.reshape(64, 2, 96, 2, 3).mean(axis=(1, 3))
    got = fit(Image.fromarray(frame.astype(np.uint8)), 64, 96).astype(np.float64)
    assert got.shape == (64, 96, 3)
    assert np.abs(got - expected).max() <= 0.5 + 1e-6
