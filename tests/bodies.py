"""Request bodies several test modules render with tiny-random on the CPU."""

# A few hundred milliseconds end to end.
SMALL = {"prompt": "a paper boat on a pond", "num_frames": 9, "height": 64, "width": 96}
# About 6 s of denoising steps on two cores: slow enough to be caught mid-render.
SLOW = {
    "prompt": "waves at dusk",
    "height": 512,
    "width": 768,
    "num_frames": 49,
    "num_inference_steps": 50,
}
