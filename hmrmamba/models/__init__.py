"""The HMRMamba model family: STA-Mamba lifter (dual-scan Mamba + GA deformable attention), the
motion-guided reconstructor with a PMCE-style co-evolution decoder, baselines, and the variant
registry (``build(name, **overrides)``). See docs/model.md."""

from hmrmamba.models.baselines import GRUContext, MLPLifter, TransformerLifter
from hmrmamba.models.coevolution import CoevolutionDecoder, init_coarse_vertices, nearest_joint_index
from hmrmamba.models.dual_scan import DualScanMambaBlock, ScanLayout, TemporalScanState
from hmrmamba.models.ga_attention import GeometryAwareAttention
from hmrmamba.models.lifter import GeometryAwareLifter, LifterState, PoseEncoder, check_inputs
from hmrmamba.models.outputs import HMROutput, ModelOutput, ReconOutput
from hmrmamba.models.reconstructor import (
    MeshAssets,
    MeshUpsampler,
    MotionAwareAttention,
    MotionGuidedReconstructor,
    MotionState,
    explicit_motion,
    mesh_assets_from_hierarchy,
    random_mesh_assets,
)
from hmrmamba.models.registry import (
    TABLE3_ABLATIONS,
    VARIANTS,
    HMRMamba,
    StreamState,
    build,
    build_from_config,
    resolve_config,
    variant_config,
    variant_names,
)

__all__ = [
    "TABLE3_ABLATIONS",
    "VARIANTS",
    "CoevolutionDecoder",
    "DualScanMambaBlock",
    "GRUContext",
    "GeometryAwareAttention",
    "GeometryAwareLifter",
    "HMRMamba",
    "HMROutput",
    "LifterState",
    "MLPLifter",
    "MeshAssets",
    "MeshUpsampler",
    "ModelOutput",
    "MotionAwareAttention",
    "MotionGuidedReconstructor",
    "MotionState",
    "PoseEncoder",
    "ReconOutput",
    "ScanLayout",
    "StreamState",
    "TemporalScanState",
    "TransformerLifter",
    "build",
    "build_from_config",
    "check_inputs",
    "explicit_motion",
    "init_coarse_vertices",
    "mesh_assets_from_hierarchy",
    "nearest_joint_index",
    "random_mesh_assets",
    "resolve_config",
    "variant_config",
    "variant_names",
]
