"""The few numbers per stage that DVC shows as metrics.

Every stage writes its detailed metrics to ``metrics/<stage>.json`` (a DVC-cached output: restored by
``dvc exp apply`` and ``dvc checkout``, read by the report and the flows). ``dvc exp show`` and
``dvc metrics diff`` read only the small files written from it here, ``metrics/summary/<stage>.json``
(tracked by git), plus the evaluate stage's test errors per dataset in ``metrics/eval.json``. So an
experiment table has a column per headline number, not one per profiler row or detector statistic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: stage -> the dotted keys of its detailed metrics that make its headline (``seconds`` for every stage).
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "body_model": ("vertices", "faces"),
    "prepare": ("train.frames", "val.frames", "test.frames"),
    "detect2d": (),
    "train_backbone": ("epochs", "best_val_mpjpe", "seconds_per_epoch"),
    "features": ("probe.probe_mm", "probe.floor_mm"),
    "train_lift": ("params_m", "epochs", "best_val_mpjpe", "seconds_per_epoch"),
    "train_mesh": ("params_m", "epochs", "best_val_mpjpe", "seconds_per_epoch"),
    "evaluate": ("frames",),
    "efficiency": (),
    "report": (),
}


def _get(metrics: Mapping[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def headline(stage: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of ``stage``'s detailed ``metrics``: ``{dotted key: number}`` with ``seconds``.

    Keys missing from ``metrics`` (a dataset without a probe, say) or not numbers are left out; an unknown
    stage has only ``seconds``.
    """
    out: dict[str, float] = {}
    for key in (*HEADLINE_KEYS.get(stage, ()), "seconds"):
        value = _get(metrics, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key.replace(".", "_")] = round(float(value), 3) if isinstance(value, float) else value
    return out
