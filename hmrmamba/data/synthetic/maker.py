"""The embedded default dataset: procedural motions on the procedural body, rendered to video.

For every sequence: pick a subject (a fixed body shape owned by one split), generate a motion
clip, pose the body through smplx, place a random camera looking at the person, project the
H36M-17 joints and render frames with a textured background, optional occluders and motion blur.

Splits are disjoint in subjects (each subject id belongs to one split) and in motions (every clip
is drawn from its own seeded stream; kinds are shared, clips are not).

Everything is stored in the camera frame: ``smpl_pose``'s global orientation and ``smpl_trans``
are re-expressed so that ``smplx(pose, betas, trans)`` gives the camera-frame mesh directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from hmrmamba.data.synthetic.cameras import Camera, fit_in_frame, push_out_of_frame, sample_camera
from hmrmamba.errors import InputError
from hmrmamba.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from hmrmamba.named_rng import named_rng


@dataclass(frozen=True)
class SplitSpec:
    """How many sequences and subjects one split has."""

    name: str
    sequences: int
    subjects: int


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic dataset (the ``synthetic`` section of params.yaml)."""

    splits: tuple[SplitSpec, ...]
    frames: tuple[int, int] = (48, 96)
    fps: float = 25.0
    image_size: int = 128
    motions: tuple[str, ...] | None = None
    occluder_prob: float = 0.3
    blur_prob: float = 0.3
    #: "clothing": a random outfit per sequence (skin tone, garments, stripes); "parts": the legacy
    #: colour code per body part, left and right in different hues (a cue real people lack)
    appearance: str = "clothing"
    distance: tuple[float, float] = (3.5, 6.0)
    height: tuple[float, float] = (-0.2, 1.2)
    yaw_deg: tuple[float, float] = (-180.0, 180.0)
    person_fraction: tuple[float, float] = (0.45, 0.8)
    pitch_deg: tuple[float, float] = (0.0, 0.0)
    roll_deg: tuple[float, float] = (0.0, 0.0)
    focal: tuple[float, float] | None = None  # image widths; None: from person_fraction
    partial_prob: float = 0.0  # probability that a sequence's person partly leaves the frame
    partial_cut: tuple[float, float] = (0.1, 0.4)  # fraction of the person's box past the edge
    betas_scale: float = 1.5
    max_travel: float = 1.0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, p: dict) -> SyntheticConfig:
        try:
            splits = tuple(SplitSpec(name=k, sequences=int(v["sequences"]), subjects=int(v["subjects"]))
                           for k, v in p["splits"].items())
            cam = p.get("camera", {})
            cfg = cls(splits=splits, frames=tuple(p["frames"]), fps=float(p["fps"]),
                      image_size=int(p["image_size"]),
                      motions=None if p.get("motions") in (None, "all") else tuple(p["motions"]),
                      occluder_prob=float(p.get("occluder_prob", 0.3)),
                      blur_prob=float(p.get("blur_prob", 0.3)),
                      appearance=str(p.get("appearance", "clothing")),
                      distance=tuple(cam.get("distance", cls.distance)),
                      height=tuple(cam.get("height", cls.height)),
                      yaw_deg=tuple(cam.get("yaw_deg", cls.yaw_deg)),
                      person_fraction=tuple(cam.get("person_fraction", cls.person_fraction)),
                      pitch_deg=tuple(cam.get("pitch_deg", cls.pitch_deg)),
                      roll_deg=tuple(cam.get("roll_deg", cls.roll_deg)),
                      focal=None if cam.get("focal") is None else tuple(cam["focal"]),
                      partial_prob=float(cam.get("partial_prob", 0.0)),
                      partial_cut=tuple(cam.get("partial_cut", cls.partial_cut)),
                      betas_scale=float(p.get("betas_scale", 1.5)),
                      max_travel=float(p.get("max_travel", 1.0)), seed=int(p.get("seed", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad synthetic parameters ({exc!r})", file="params.yaml", field="synthetic",
                             expected="splits.{name}.{sequences,subjects}, frames [min,max], fps, "
                                      "image_size, camera ranges") from None
        if cfg.frames[0] < 1 or cfg.frames[1] < cfg.frames[0]:
            raise InputError(f"frames={list(cfg.frames)}", file="params.yaml", field="synthetic.frames",
                             expected="[min, max] with 1 <= min <= max")
        if not cfg.splits:
            raise InputError("no splits", file="params.yaml", field="synthetic.splits",
                             expected="at least one split, e.g. {train: {sequences: 40, subjects: 8}}")
        if any(s.sequences < 1 or s.subjects < 1 for s in cfg.splits):
            raise InputError("a split has no sequences or subjects", file="params.yaml",
                             field="synthetic.splits", expected="sequences >= 1 and subjects >= 1")
        ranges = ["distance", "height", "yaw_deg", "person_fraction", "pitch_deg", "roll_deg", "partial_cut"]
        for key in ranges + (["focal"] if cfg.focal is not None else []):
            rng = getattr(cfg, key)
            if len(rng) != 2 or not all(np.isfinite(rng)) or rng[0] > rng[1]:
                raise InputError(f"{key}={list(rng)}", file="params.yaml", field=f"synthetic.camera.{key}",
                                 expected="a finite range [lo, hi] with lo <= hi")
        if (cfg.focal is not None and cfg.focal[0] <= 0) or not 0 <= cfg.partial_prob <= 1 \
                or not 0 <= cfg.partial_cut[0] <= cfg.partial_cut[1] < 1:
            raise InputError(f"focal={cfg.focal}, partial_prob={cfg.partial_prob}, "
                             f"partial_cut={cfg.partial_cut}", file="params.yaml", field="synthetic.camera",
                             expected="focal above 0 (or null), partial_prob in [0, 1], "
                                      "partial_cut in [0, 1)")
        if cfg.distance[0] <= 0 or cfg.person_fraction[0] <= 0:
            raise InputError(f"distance={list(cfg.distance)}, person_fraction={list(cfg.person_fraction)}",
                             file="params.yaml", field="synthetic.camera",
                             expected="distance and person_fraction ranges above 0")
        return cfg


def subject_ids(cfg: SyntheticConfig) -> dict[str, list[str]]:
    """Disjoint subject names per split: S00.. for the first split, continuing for the next."""
    out, k = {}, 0
    for spec in cfg.splits:
        out[spec.name] = [f"S{k + i:02d}" for i in range(spec.subjects)]
        k += spec.subjects
    return out


def camera_frame_smpl(pose: np.ndarray, trans: np.ndarray, pelvis_rest: np.ndarray, cam: Camera
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Re-express SMPL global orientation and translation in the camera frame.

    pose: (T,72) world; trans: (T,3) world; pelvis_rest: (3,) rest pelvis joint for the betas.
    SMPL rotates about the pelvis joint, so ``trans_cam = R (trans + j0) + t - j0``.
    -> pose_cam (T,72), trans_cam (T,3).
    """
    R = torch.as_tensor(cam.R, dtype=torch.float64)
    go = axis_angle_to_matrix(torch.as_tensor(pose[:, :3], dtype=torch.float64))
    go_cam = matrix_to_axis_angle(R @ go).numpy()
    pose_cam = np.concatenate([go_cam, pose[:, 3:]], axis=1)
    trans_cam = (trans + pelvis_rest) @ cam.R.T + cam.t - pelvis_rest
    return pose_cam.astype(np.float32), trans_cam.astype(np.float32)


def limit_travel(trans: np.ndarray, max_travel: float) -> np.ndarray:
    """Scale the horizontal (x, z) root path so it stays within ``max_travel`` metres of its mean.

    trans: (T, 3) world metres, y up -> (T, 3). Keeps people inside a static camera's view;
    vertical motion (jumps, squats) is untouched.
    """
    out = np.array(trans, dtype=np.float64, copy=True)
    centre = out[:, [0, 2]].mean(0)
    radius = np.linalg.norm(out[:, [0, 2]] - centre, axis=1).max()
    if radius > max_travel:
        out[:, [0, 2]] = centre + (out[:, [0, 2]] - centre) * (max_travel / radius)
    return out.astype(trans.dtype)


_SAFE = re.compile(r"[^\w.@+-]")  # characters a sequence name keeps from a motion's kind


class SyntheticMaker:
    """Builds splits of the synthetic dataset from a body model file."""

    def __init__(self, cfg: SyntheticConfig, body_model_path, *, device: str = "cpu"):
        from hmrmamba.body.body_model import load_body_arrays, load_smpl
        from hmrmamba.render.scene import part_colors

        self.cfg = cfg
        self.device = torch.device(device)
        self.smpl = load_smpl(body_model_path).to(self.device)
        arrays = load_body_arrays(body_model_path)
        self.faces = torch.as_tensor(arrays["f"].astype(np.int64), device=self.device)
        self.j_h36m = torch.as_tensor(arrays["J_regressor_h36m"], dtype=torch.float32, device=self.device)
        self.lbs_weights = torch.as_tensor(arrays["weights"], dtype=torch.float32)
        self.rest_vertices = torch.as_tensor(arrays["v_template"], dtype=torch.float32)
        self.base_colors = part_colors(self.lbs_weights)

    @torch.inference_mode()
    def _pose(self, pose: np.ndarray, betas: np.ndarray, trans: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """-> vertices (T,V,3) and rest pelvis (3,) for one clip."""
        t = pose.shape[0]
        f32 = dict(dtype=torch.float32, device=self.device)
        b = torch.as_tensor(betas, **f32)[None].expand(t, -1)
        out = self.smpl(global_orient=torch.as_tensor(pose[:, :3], **f32),
                        body_pose=torch.as_tensor(pose[:, 3:], **f32),
                        betas=b, transl=torch.as_tensor(trans, **f32))
        rest = self.smpl(betas=b[:1])
        return out.vertices, rest.joints[0, 0]

    @torch.inference_mode()
    def standing_pelvis_height(self, betas: np.ndarray) -> float:
        """Rest pelvis height above the lowest vertex (the soles) of the body with ``betas``, metres."""
        rest = self.smpl(betas=torch.as_tensor(betas, dtype=torch.float32, device=self.device)[None])
        return float(rest.joints[0, 0, 1] - rest.vertices[0, :, 1].min())

    def scaled_root_path(self, clip, betas: np.ndarray) -> np.ndarray:
        """The clip's root path (T, 3) for the subject with ``betas``: strides scaled by the subject's standing
        pelvis height over the mocap actor's, so that feet do not slide.

        BVH: the actor's height comes from the skeleton (``clip.pelvis_height``) and the path, relative to
        standing on the floor, is scaled as a whole. AMASS: the actor is this body model with the file's
        betas, and the displacement from the first frame is scaled (the path is SMPL's ``transl``, not
        relative to standing). Procedural motion is made for the subject's body and is returned as is.
        """
        if clip.pelvis_height:
            return clip.trans * np.float32(self.standing_pelvis_height(betas) / clip.pelvis_height)
        if clip.betas is not None:
            ratio = self.standing_pelvis_height(betas) / self.standing_pelvis_height(clip.betas)
            return (clip.trans[:1] + (clip.trans - clip.trans[:1]) * np.float32(ratio)).astype(clip.trans.dtype)
        return clip.trans

    def sequences(self, split: SplitSpec, subjects: list[str], motion=None) -> Iterator[dict]:
        """Yield one dict per sequence with per-frame arrays and per-sequence fields.

        motion: the split's :class:`~hmrmamba.data.mocap.sources.SplitMotion` (None: procedural only).
        A mocap clip keeps its joint rotations; bone lengths are the subject's, and its root path is
        scaled by the subject's pelvis height over the mocap actor's (:meth:`scaled_root_path`).
        """
        from hmrmamba.data.synthetic.motion import random_motion, sample_betas
        from hmrmamba.render.raster import render_mesh
        from hmrmamba.render.scene import add_occluders, motion_blur, procedural_background

        cfg = self.cfg
        betas_of = {s: sample_betas(named_rng(cfg.seed, "subject", s), num=10, scale=cfg.betas_scale)
                    for s in subjects}
        for i in range(split.sequences):
            rng = named_rng(cfg.seed, "sequence", split.name, i)
            subject = subjects[i % len(subjects)]
            n = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
            clip = None if motion is None else motion.clip(cfg.seed, i, n)
            if clip is None:
                clip = random_motion(rng, num_frames=n, fps=cfg.fps, kinds=cfg.motions)
            n = clip.num_frames
            betas = betas_of[subject].astype(np.float32)
            trans = self.scaled_root_path(clip, betas)
            trans_w = limit_travel(trans, cfg.max_travel)
            verts_w, pelvis_rest = self._pose(clip.pose, betas, trans_w)
            joints_w = torch.einsum("jv,tvc->tjc", self.j_h36m, verts_w).numpy()
            cam = sample_camera(rng, target=joints_w[:, 0].mean(0), image_size=cfg.image_size,
                                distance=cfg.distance, height=cfg.height, yaw_deg=cfg.yaw_deg,
                                person_fraction=cfg.person_fraction, pitch_deg=cfg.pitch_deg,
                                roll_deg=cfg.roll_deg, focal=cfg.focal)
            cam = fit_in_frame(cam, verts_w[:, ::7].numpy(), cfg.image_size)
            if cfg.partial_prob > 0 and rng.random() < cfg.partial_prob:
                cam = push_out_of_frame(cam, verts_w[:, ::7].numpy(), cfg.image_size,
                                        cut=float(rng.uniform(*cfg.partial_cut)), side=int(rng.integers(4)))
            R = torch.as_tensor(cam.R, dtype=torch.float32)
            tvec = torch.as_tensor(cam.t, dtype=torch.float32)
            verts_c = verts_w @ R.T + tvec
            joints_c = cam.to_camera(joints_w).astype(np.float32)
            pose_c, trans_c = camera_frame_smpl(clip.pose, trans_w, pelvis_rest.numpy(), cam)
            images = self._render(verts_c, cam, rng, render_mesh, procedural_background, add_occluders,
                                  motion_blur)
            yield dict(
                frames=dict(joints3d=joints_c, joints2d=cam.project(joints_c).astype(np.float32),
                            smpl_pose=pose_c, smpl_betas=np.tile(betas, (n, 1)), smpl_trans=trans_c,
                            image=images),
                seq=dict(seq_name=f"{split.name}_{i:04d}_{subject}_{_SAFE.sub('-', clip.kind)}", seq_len=n,
                         camera=cam.intrinsics.astype(np.float32), fps=cfg.fps, subject=subject,
                         motion=clip.kind))

    def _render(self, verts_c: torch.Tensor, cam: Camera, rng: np.random.Generator, render_mesh,
                procedural_background, add_occluders, motion_blur) -> np.ndarray:
        """verts_c: (T,V,3) camera metres -> (T,H,W,3) uint8 frames."""
        cfg = self.cfg
        n, size = verts_c.shape[0], cfg.image_size
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        bg = procedural_background(gen, 1, size, size).expand(n, -1, -1, -1)
        if cfg.appearance == "clothing":
            from hmrmamba.render.scene import clothing_colors

            colors = clothing_colors(self.lbs_weights, self.rest_vertices, rng)
        else:
            tint = torch.as_tensor(rng.uniform(0.75, 1.25, size=3), dtype=torch.float32)
            colors = (self.base_colors * tint).clamp(0, 1)
        camera = torch.as_tensor(cam.intrinsics, dtype=torch.float32).expand(n, 4)
        kwargs = dict(image_size=(size, size), vertex_colors=colors, background=bg, cull_backfaces=True)
        if rng.random() < cfg.blur_prob:
            velocity = torch.zeros_like(verts_c)
            velocity[1:] = verts_c[1:] - verts_c[:-1]
            velocity[0] = velocity[1] if n > 1 else 0.0
            out = motion_blur(verts_c, velocity, self.faces, camera, samples=3, **kwargs)
        else:
            out = render_mesh(verts_c, self.faces, camera, **kwargs)
        images = out.image
        if rng.random() < cfg.occluder_prob:
            # the same seed every frame: one occluder that keeps its shape and place relative
            # to the body for the whole sequence, instead of a new one each frame
            seed = int(rng.integers(2 ** 31))
            images = torch.cat([add_occluders(images[i:i + 1], out.depth[i:i + 1], seed, max_occluders=1,
                                              probability=1.0, size_range=(0.12, 0.3)).images
                                for i in range(n)])
        return images.numpy()

    def build(self, split: SplitSpec, subjects: list[str], progress: bool = True, motion=None
              ) -> tuple[dict, dict]:
        """-> (frames, seqs) arrays of one split in the HDF5 schema (motion: see :meth:`sequences`)."""
        frames: dict[str, list] = {}
        seqs: dict[str, list] = {}
        for item in tqdm(self.sequences(split, subjects, motion), total=split.sequences, disable=not progress,
                         desc=f"prepare {split.name}", unit="seq"):
            for k, v in item["frames"].items():
                frames.setdefault(k, []).append(v)
            for k, v in item["seq"].items():
                seqs.setdefault(k, []).append(v)
        lengths = np.asarray(seqs["seq_len"], dtype=np.int64)
        out_seqs = {k: np.asarray(v) for k, v in seqs.items()}
        out_seqs["seq_len"] = lengths
        out_seqs["seq_start"] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return {k: np.concatenate(v) for k, v in frames.items()}, out_seqs
