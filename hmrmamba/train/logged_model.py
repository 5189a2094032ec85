"""A trained checkpoint as an MLflow model: a pyfunc that rebuilds the network from ``best.pt``, with its
signature, logged to the stage's run and registered as ``hmrmamba-<variant>-lifter`` / ``-mesh``.

The checkpoint files stay where the stage writes them (DVC outputs); the logged model holds a copy of
``best.pt`` and, for the mesh model, the two body-model files it is built with. ``mlflow.pyfunc.load_model``
on it needs this package installed (the pyfunc imports :mod:`hmrmamba`).

Inputs (float32, batch first): ``kp2d`` (B, T, 17, 2) px, ``conf`` (B, T, 17), ``feats`` (B, T, F)
[, ``spatial`` (B, T, C, h, w) for a GA model that samples feature maps]. Outputs: ``pose3d`` (B, T, 17, 3)
metres, and for the mesh model also ``vertices`` (B, T, V, 3) and ``joints`` (B, T, 17, 3).

mlflow is imported lazily (``import hmrmamba`` stays light); the pyfunc class itself needs it.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)

#: Frames in the logged input example: the signature leaves batch and time open (-1), so a short clip is enough.
EXAMPLE_FRAMES = 4


def registered_name(variant: str, *, lift_only: bool) -> str:
    """The model-registry name of a stage's model: ``hmrmamba-<variant>-lifter`` or ``hmrmamba-<variant>-mesh``."""
    part = re.sub(r"[^A-Za-z0-9_.-]+", "-", variant).strip("-.") or "model"
    return f"hmrmamba-{part}-{'lifter' if lift_only else 'mesh'}"


def predict_arrays(model, inputs: Mapping[str, np.ndarray], *, lift_only: bool) -> dict[str, np.ndarray]:
    """``model`` (an HMRMamba) on a dict of arrays -> {"pose3d"[, "vertices", "joints"]} float32 arrays."""
    import torch

    def tensor(name: str):
        value = inputs.get(name)
        return None if value is None else torch.as_tensor(np.asarray(value, dtype=np.float32))

    with torch.no_grad():
        out = model(tensor("kp2d"), tensor("conf"), tensor("feats"),
                    tensor("spatial") if getattr(model, "map_dim", 0) else None, lift_only=lift_only)
    result = {"pose3d": out.pose3d.float().numpy()}
    if not lift_only and out.vertices is not None:
        result["vertices"] = out.vertices.float().numpy()
        result["joints"] = out.joints.float().numpy()
    return result


def _python_model_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class CheckpointModel(_python_model_base()):
    """pyfunc over a training stage's ``best.pt``: ``predict`` takes and returns dicts of arrays (module doc)."""

    def __init__(self, lift_only: bool):
        self.lift_only = lift_only
        self.model = None

    def load_context(self, context) -> None:
        from hmrmamba.train.trained import load_trained

        files = context.artifacts
        warm = _WARM.get(_digest(files["checkpoint"]))
        if warm is not None:  # MLflow's check of the logged model, in the process that just logged it
            self.model = warm
            return
        # load_trained reads the mesh assets through these two attributes of a Layout
        where = SimpleNamespace(body_model=Path(files.get("body_model", "")),
                                downsampling=Path(files.get("mesh_downsampling", "")))
        self.model, _ = load_trained(files["checkpoint"], where, lift_only=self.lift_only)

    def predict(self, context, model_input, params=None):
        return predict_arrays(self.model, model_input, lift_only=self.lift_only)


#: sha256 of a checkpoint -> its model, while :func:`log_trained_model` logs it: MLflow checks the input example by
#: loading the logged copy and running it, which then does not rebuild the network from the file a second time.
_WARM: dict[str, Any] = {}


def _digest(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_example(model, data, *, frames: int = EXAMPLE_FRAMES) -> dict[str, np.ndarray]:
    """The first ``frames`` frames of the first sequence of ``data`` (a :class:`SplitArrays`) as model inputs."""
    ds = data.windows(length=frames, stride=frames, centred=False)
    first = ds[0]
    names = ["kp2d", "conf", "feats"] + (["spatial"] if getattr(model, "map_dim", 0) and "spatial" in first else [])
    return {k: np.asarray(first[k], dtype=np.float32)[None] for k in names}


def log_trained_model(checkpoint: Path, layout, *, model, example: Mapping[str, np.ndarray], lift_only: bool,
                      variant: str, register: bool = True) -> Any:
    """Log ``checkpoint`` to the active run as a pyfunc model named ``model`` with its signature (:func:`signature`
    of ``example`` and the checkpoint's output on it) and register it -> the ModelInfo (None without an active
    run). ``model`` is the trained network (its architecture; the checkpoint's weights are loaded into a copy).

    The registered name (:func:`registered_name`) is made from the run's ``variant`` tag (a flow row's label,
    e.g. an ablation row), else ``variant``. Requirements are given, not inferred (inferring them imports the
    model in a subprocess: seconds per stage).
    """
    import mlflow
    import torch

    from hmrmamba import __version__

    active = mlflow.active_run()
    if active is None:
        return None
    variant = mlflow.get_run(active.info.run_id).data.tags.get("variant") or variant
    import copy

    from hmrmamba.train.checkpoint import load_checkpoint, load_model_state

    best = copy.deepcopy(getattr(model, "module", model)).eval()  # the checkpoint's weights, not the last epoch's
    load_model_state(best, load_checkpoint(checkpoint)["model"], source=checkpoint)
    output = predict_arrays(best, example, lift_only=lift_only)
    artifacts = {"checkpoint": str(checkpoint)}
    if not lift_only:
        artifacts.update(body_model=str(layout.body_model), mesh_downsampling=str(layout.downsampling))
    key = _digest(checkpoint)
    _WARM[key] = best
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints.*predict", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name="model", python_model=CheckpointModel(lift_only), artifacts=artifacts,
                signature=signature(example, output), input_example=dict(example),
                pip_requirements=[f"hmrmamba=={__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
                registered_model_name=registered_name(variant, lift_only=lift_only) if register else None)
    finally:
        _WARM.pop(key, None)


def signature(example: Mapping[str, np.ndarray], output: Mapping[str, np.ndarray]):
    """The model signature: float32 tensors named as in ``example`` / ``output``, batch and time left open."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def schema(arrays: Mapping[str, np.ndarray]) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, -1, *np.shape(v)[2:]), name) for name, v in arrays.items()])

    return ModelSignature(inputs=schema(example), outputs=schema(output))
