"""Writing frames as an mp4 (the `video` extra's moviepy), for evaluation recordings.

moviepy (2.2) sums 1/fps once per frame for a clip's length and truncates length x fps to a frame
count, so float rounding drops the last frame of more than half of all episode lengths at 50 fps
(Zulko/moviepy#2507); here the clip lasts half a frame longer, which gives exactly the frames given.
"""

from __future__ import annotations

import os

import numpy as np


def write_mp4(frames: list[np.ndarray], path: str, fps: float) -> None:
    """Frames [H, W, 3] (or grayscale [H, W]) as an mp4 at `path`, every one of them."""
    from moviepy.video.io.ImageSequenceClip import ImageSequenceClip  # the video extra, checked before recording

    frames = [np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame for frame in frames]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    clip = ImageSequenceClip(frames, fps=fps)
    clip.duration = clip.end = (len(frames) + 0.5) / fps
    clip.write_videofile(path, logger=None)
