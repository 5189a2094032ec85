"""``hmrmamba demo``: meshes, pictures and exports from a video (see :mod:`hmrmamba.demo.pipeline`).

Modules, in pipeline order: :mod:`.blazepose` (the 2D detector: BlazePose on LiteRT, several
people tracked; its models: :mod:`.pose_models`), :mod:`.people` (which person to follow),
:mod:`.keypoints` (2D keypoints from a file or the legacy MediaPipe package),
:mod:`.inference` (the trained model, its crops and features), :mod:`.camera` (where the mesh
sits in front of the camera), :mod:`.pictures` (overlay and side view), :mod:`.pipeline`
(the command), :mod:`.quality` (bone-length std, roughness, jitter of an output). Streaming
inference is :mod:`hmrmamba.demo.streaming`.
"""

from hmrmamba.demo.camera import default_camera, estimate_translation, project
from hmrmamba.demo.inference import Inference, load_inference, predict_offline, sequence_inputs
from hmrmamba.demo.keypoints import (
    KeypointTrack,
    MediaPipePoseDetector,
    fill_undetected,
    load_keypoints,
    mediapipe33_to_h36m17,
)
from hmrmamba.demo.pipeline import DemoResult, run_demo, summary_line

__all__ = [
    "DemoResult", "Inference", "KeypointTrack", "MediaPipePoseDetector", "default_camera", "estimate_translation",
    "fill_undetected", "load_inference", "load_keypoints", "mediapipe33_to_h36m17", "predict_offline", "project",
    "run_demo", "sequence_inputs", "summary_line",
]
