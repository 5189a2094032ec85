"""Frame rendering for the synthetic set and mesh pictures, in plain PyTorch (no OpenGL).

:mod:`.raster` is a batched z-buffer triangle rasterizer with Lambert shading (plus overlays
and side views); :mod:`.scene` dresses the frames: procedural backgrounds, occluders, motion
blur and per-part left/right colours.
"""

from hmrmamba.render.raster import (
    Fragments,
    RenderOutput,
    overlay,
    rasterize,
    render_mesh,
    rotate_about_vertical,
    side_view,
)
from hmrmamba.render.scene import (
    OccluderOutput,
    add_occluders,
    default_part_palette,
    motion_blur,
    part_colors,
    procedural_background,
)

__all__ = ["Fragments", "OccluderOutput", "RenderOutput", "add_occluders", "default_part_palette",
           "motion_blur", "overlay", "part_colors", "procedural_background", "rasterize",
           "render_mesh", "rotate_about_vertical", "side_view"]
