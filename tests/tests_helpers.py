"""Small helpers shared by tests (kept out of conftest so they can be imported by name)."""

import av
import numpy as np


def write_mp4(path, rng, frames=12, size=24, fps=8):
    """A tiny H.264 clip: a bright square drifting over a random background colour."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    base = rng.integers(0, 128, size=3)
    for f in range(frames):
        img = np.zeros((size, size, 3), np.uint8) + base.astype(np.uint8)
        x = (2 + f) % (size - 6)
        img[8:14, x:x + 6] = 250
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
