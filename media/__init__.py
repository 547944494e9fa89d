"""Frame sources shared by the client and the quantizer: cameras, video files, image
folders and a synthetic sample clip. Needs numpy and (for cameras, video and encoding)
OpenCV; imports neither grpc nor torch, so the quantization stage can read calibration
frames without pulling in the gRPC client."""

from edgeinfer.media.cv import require_cv2
from edgeinfer.media.sources import IMAGE_SUFFIXES, SourceError, capture_frames, image_frames, paced

__all__ = ["IMAGE_SUFFIXES", "SourceError", "capture_frames", "image_frames", "paced", "require_cv2"]
