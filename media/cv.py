"""OpenCV as an optional dependency (the ``[camera]`` extra)."""

from __future__ import annotations

from typing import Any

__all__ = ["optional_cv2", "require_cv2"]


def optional_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def require_cv2() -> Any:
    cv2 = optional_cv2()
    if cv2 is None:  # pragma: no cover - depends on the install
        raise ImportError(
            "JPEG encoding and camera/video sources need OpenCV: pip install 'edgeinfer[camera]' "
            "(or send raw frames with encoding='raw', or JPEG bytes you already have)"
        )
    return cv2
