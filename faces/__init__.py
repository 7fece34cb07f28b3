"""Offline face analysis with dlib: detection, 68 landmarks, canonical alignment, pose, eyes, mouth, identity.

Models come from the `face_recognition_models` package (dlib's 68-point shape predictor and ResNet
face-embedding network), loaded from its folder; nothing is downloaded.
"""

from .align import AlignedFace, align_face, canonical_template
from .analyzer import FaceAnalyzer, NoFaceError, default_analyzer
from .geometry import eye_aspect_ratio, eye_openness, head_pose, inter_ocular, mouth_opening

__all__ = [
    "AlignedFace", "FaceAnalyzer", "NoFaceError", "align_face", "canonical_template", "default_analyzer",
    "eye_aspect_ratio", "eye_openness", "head_pose", "inter_ocular", "mouth_opening",
]
