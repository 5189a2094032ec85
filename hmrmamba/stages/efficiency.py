"""DVC stage ``efficiency``: Table 4 (size, MACs/FLOPs, CPU speed, peak memory, scaling in T, scan speed-up).

Writes ``metrics/efficiency.json`` and logs the markdown table (:func:`hmrmamba.efficiency.benchmark.efficiency_table`),
which ``hmrmamba efficiency --table`` prints again from the JSON. Inputs are random tensors of the real
shapes: the stage depends on the model code, not on the data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main

STAGE = "efficiency"
log = logging.getLogger(__name__)


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from hmrmamba.efficiency.benchmark import efficiency_table, measure_efficiency, settings_from_params

    settings = settings_from_params(params.get(STAGE, {}))
    metrics = measure_efficiency(settings, log=lambda msg: log.info("efficiency: %s", msg))
    log.info("efficiency:\n%s", efficiency_table(metrics))
    return metrics


if __name__ == "__main__":
    stage_main(STAGE, run)
