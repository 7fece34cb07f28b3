"""Reading and writing real media files on local paths: audio, images, MP4 video (PyAV, Pillow).

No Ray and no object storage here: pipelines/ stages download to a local temp file first.
"""

from .audio import MediaError, load_audio
from .image import load_image
from .video import EncoderThread, Mp4Writer, VideoClip, encode_mp4, probe_video, read_video

__all__ = ["EncoderThread", "MediaError", "Mp4Writer", "VideoClip", "encode_mp4", "load_audio", "load_image", "probe_video", "read_video"]
