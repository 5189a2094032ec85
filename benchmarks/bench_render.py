"""Frames per second of the torch z-buffer renderer on an SMPL-sized mesh.

Mesh: a closed UV ellipsoid with body proportions (0.5 x 1.7 x 0.3 m) and exactly the SMPL
counts, 6,890 vertices and 13,776 triangles (82 rings x 84 segments + 2 poles), 3 m in front of
the camera; the focal length scales with the frame so the body spans ~80% of its height at
every size. Vertex colours and smooth Lambert shading over a procedural background, as the
synthetic dataset renders. Timings are wall clock with ``torch.set_num_threads(threads)``:
median (and best) over repeats after a warm-up. "1-thread frames per CPU-s" runs the same
call with one intra-op thread and divides by the process CPU time: it hardly depends on other
processes sharing the cores, and it is a lower bound of the wall-clock rate with 2 threads on
idle cores.

    .venv/bin/python benchmarks/bench_render.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch

from hmrmamba.render import render_mesh
from hmrmamba.render.scene import add_occluders, motion_blur, procedural_background


def smpl_sized_ellipsoid(rings: int = 82, segments: int = 84,
                         radii: tuple[float, float, float] = (0.25, 0.85, 0.15)):
    """Closed, outward-wound UV ellipsoid: (V, 3) metres, (F, 3) with V = 6890, F = 13776."""
    theta = torch.linspace(0.0, math.pi, rings + 2)[1:-1]
    phi = torch.arange(segments) * (2.0 * math.pi / segments)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([torch.sin(t) * torch.cos(p), -torch.cos(t), torch.sin(t) * torch.sin(p)],
                       dim=-1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, -1.0, 0.0]]), ring, torch.tensor([[0.0, 1.0, 0.0]])])
    verts = verts * torch.tensor(radii)
    r = torch.arange(rings - 1)[:, None]
    s = torch.arange(segments)[None, :]
    a, b = 1 + r * segments + s, 1 + r * segments + (s + 1) % segments
    c, d = a + segments, b + segments
    bottom = rings * segments + 1
    s1 = torch.arange(segments)
    faces = torch.cat([
        torch.stack([torch.zeros_like(s1), 1 + s1, 1 + (s1 + 1) % segments], -1),
        torch.stack([a, c, d], -1).reshape(-1, 3), torch.stack([a, d, b], -1).reshape(-1, 3),
        torch.stack([torch.full_like(s1, bottom), bottom - segments + (s1 + 1) % segments,
                     bottom - segments + s1], -1),
    ])
    return verts, faces


def time_it(fn, repeats: int) -> tuple[float, float]:
    """Median and best wall-clock seconds of one call, after a warm-up."""
    fn()
    wall = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - start)
    return statistics.median(wall), min(wall)


def cpu_time_one_thread(fn, repeats: int) -> float:
    """Best process CPU seconds of one call with one intra-op thread (robust to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn()
        best = math.inf
        for _ in range(repeats):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        return best
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    verts, faces = smpl_sized_ellipsoid()
    assert verts.shape == (6890, 3) and faces.shape == (13776, 3)
    colors = (verts - verts.min(0).values) / (verts.max(0).values - verts.min(0).values)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, mesh V={len(verts)} "
          f"F={len(faces)}; frames/s, median (best) of {args.repeats}\n")
    print("| size | batch | fps | fps, cull_backfaces | 1-thread frames per CPU-s (cull) "
          "| covered pixels |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in (64, 128, 256):
        focal = 0.8 * size / 1.7 * 3.0
        for batch in (1, 16, 64):
            v = (verts + torch.tensor([0.0, 0.0, 3.0])).expand(batch, -1, -1).contiguous()
            cam = torch.tensor([focal, focal, size / 2, size / 2]).expand(batch, 4)
            bg = procedural_background(0, batch, size, size)
            cells, per_cpu = [], []
            for cull in (False, True):
                run = functools.partial(render_mesh, v, faces, cam, image_size=(size, size),
                                        vertex_colors=colors, background=bg, cull_backfaces=cull)
                med, best = time_it(run, args.repeats)
                cells.append(f"{batch / med:,.0f} ({batch / best:,.0f})")
                per_cpu.append(f"{batch / cpu_time_one_thread(run, args.repeats):,.0f}")
            cover = run().mask.float().mean().item()
            print(f"| {size} | {batch} | {cells[0]} | {cells[1]} | {' ('.join(per_cpu)}) "
                  f"| {cover:.1%} |")

    size, batch = 128, 64
    focal = 0.8 * size / 1.7 * 3.0
    v = (verts + torch.tensor([0.0, 0.0, 3.0])).expand(batch, -1, -1).contiguous()
    cam = torch.tensor([focal, focal, size / 2, size / 2]).expand(batch, 4)
    bg = procedural_background(0, batch, size, size)
    out = render_mesh(v, faces, cam, image_size=(size, size), background=bg)
    vel = torch.zeros_like(v)
    vel[..., 0] = 0.05
    steps = {
        "procedural_background": lambda: procedural_background(1, batch, size, size),
        "add_occluders (2 slots)": lambda: add_occluders(out.image, out.depth, 1),
        "motion_blur (5 samples)": lambda: motion_blur(v, vel, faces, cam, samples=5,
                                                      image_size=(size, size), background=bg),
    }
    print(f"\nScene steps at {size} px, batch {batch}:\n")
    print("| step | frames/s |")
    print("|---|---:|")
    for name, fn in steps.items():
        med, best = time_it(fn, max(3, args.repeats // 2))
        print(f"| {name} | {batch / med:,.0f} ({batch / best:,.0f}) |")


if __name__ == "__main__":
    main()
