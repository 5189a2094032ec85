"""DVC stage ``body_model``: make (or convert) the SMPL-format body model and its mesh hierarchy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.config import resolve_path
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main

STAGE = "body_model"


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from hmrmamba.body import body_model as bm
    from hmrmamba.body import mesh_sampling as ms
    from hmrmamba.body.procedural import build_procedural_smpl
    from hmrmamba.settings import section_settings

    p = section_settings(params, STAGE)
    source = p.source
    if source == "procedural":
        arrays = build_procedural_smpl(seed=p.seed)
    elif source == "smpl":
        if not p.smpl_path:
            raise InputError("source is 'smpl' but no smpl_path", file="params.yaml",
                             field="body_model.smpl_path",
                             expected="a .npz made by `hmrmamba convert-smpl SMPL_NEUTRAL.pkl`")
        arrays = bm.load_body_arrays(resolve_path(layout.root, p.smpl_path, field="body_model.smpl_path"))
        if "J_regressor_h36m" not in arrays:
            if not p.h36m_regressor:
                raise InputError("the SMPL file has no J_regressor_h36m", file="params.yaml",
                                 field="body_model.h36m_regressor",
                                 expected="path to J_regressor_h36m_correct.npy (17, 6890)")
            arrays["J_regressor_h36m"] = bm.load_regressor_npy(
                resolve_path(layout.root, p.h36m_regressor, field="body_model.h36m_regressor"))
    else:
        raise InputError(f"unknown source '{source}'", file="params.yaml", field="body_model.source",
                         expected="'procedural' or 'smpl'")
    bm.save_body_model(layout.body_model, arrays)
    if p.downsampling_path:
        hierarchy = ms.load_mesh_downsampling(
            resolve_path(layout.root, p.downsampling_path, field="body_model.downsampling_path"))
    else:
        hierarchy = ms.compute_downsampling(arrays["v_template"], arrays["f"],
                                            sizes=tuple(p.downsample_sizes))
    ms.save_mesh_hierarchy(layout.downsampling, hierarchy)
    smpl = bm.load_smpl(layout.body_model)  # the file must load through smplx
    return {"source": source, "vertices": int(smpl.v_template.shape[0]), "faces": int(arrays["f"].shape[0]),
            "levels": [int(n) for n in hierarchy.sizes]}


if __name__ == "__main__":
    stage_main(STAGE, run)
