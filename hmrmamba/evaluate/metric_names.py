"""Names and column headers of the metrics the results tables show (no torch import: the report,
the results document and the MLflow comparison read them)."""

from __future__ import annotations

#: the accuracy columns of every results table (mm, mm, mm, mm/frame^2)
ACCURACY_METRICS = ("mpjpe", "pa_mpjpe", "mpvpe", "accel")
#: the mesh-quality columns beside them: mean edge-length error (mm), mean angle between face normals
#: (degrees), umbrella-Laplacian roughness of the prediction over the ground truth's (1 = as smooth)
MESH_QUALITY_METRICS = ("edge_err", "normal_err", "roughness")
TABLE_METRICS = ACCURACY_METRICS + MESH_QUALITY_METRICS
METRIC_HEADERS = {"mpjpe": "MPJPE ↓", "pa_mpjpe": "PA-MPJPE ↓", "mpvpe": "MPVPE ↓", "accel": "Accel ↓",
                  "edge_err": "edge err (mm) ↓", "normal_err": "normal err (°) ↓",
                  "roughness": "roughness ×GT →1"}
