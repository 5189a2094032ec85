"""2D keypoint sources: ground truth, simulated detectors (SH, Detectron, CPN) and file import."""

from hmrmamba.detect.noise import (
    PRESETS,
    DetectorNoiseModel,
    SimulatedDetections,
    get_preset,
    simulate,
    simulate_events,
)
from hmrmamba.detect.sources import (
    DETECTOR_SOURCES,
    Detections,
    coco17_to_h36m17,
    detect,
    detector_error_rows,
    detector_error_table,
    error_report,
    load_keypoints_file,
    mean_error_px,
    save_keypoints_file,
    synthetic_walking_2d,
)

__all__ = [
    "DETECTOR_SOURCES", "PRESETS", "Detections", "DetectorNoiseModel", "SimulatedDetections",
    "coco17_to_h36m17", "detect", "detector_error_rows", "detector_error_table", "error_report",
    "get_preset", "load_keypoints_file", "mean_error_px", "save_keypoints_file", "simulate",
    "simulate_events", "synthetic_walking_2d",
]
