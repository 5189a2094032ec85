"""End-to-end speed of ``hmrmamba demo``: frames per second and each step's share.

The input is one sequence of the embedded test split (``data/prepared/test.h5``, frames and the
simulated CPN keypoints of ``data/detections``, so no detector runs) written as an mp4, at its own
128 px and upscaled to 1280 x 720 (an HD video). The model is loaded once before timing (the first
model load is excluded, as the target says); everything else is timed: decoding, crops and ResNet-50
features, the model, the camera fit, rendering the overlay and side view, and writing the files.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo.py --checkpoint models/mesh/best.pt \\
        [--online-checkpoint tiny-online.pt] [--threads 1]

Use as many threads as there are free cores: on a busy 2-core machine, 2 threads made each small op
~10x slower (OpenMP threads waiting on each other), so the published numbers use 1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

STEPS = ("decode", "detect", "features", "model", "step", "camera", "render", "write")


def make_inputs(root: Path, tmp: Path, *, sequence: int, size: tuple[int, int] | None) -> tuple[Path, Path, int]:
    """-> (video, keypoints npz, frames) for one test sequence, resized to ``size`` (H, W) if given."""
    import torch.nn.functional as F

    from hmrmamba.config import load_params
    from hmrmamba.data.h5schema import Field, open_h5, read_table
    from hmrmamba.layout import Layout
    from hmrmamba.data.video import write_video

    layout = Layout(root)
    params = load_params(root / "params.yaml")
    det = params["experiment"]["detector"]
    with open_h5(layout.prepared("test")) as h5:
        start = int(h5["sequences/seq_start"][sequence])
        n = int(h5["sequences/seq_len"][sequence])
        frames = np.asarray(h5["frames/image"][start:start + n])
        total = h5["frames/image"].shape[0]
    table, _ = read_table(layout.detections("test"), {f"{det}/keypoints": Field((17, 2), "f"),
                                                      f"{det}/confidence": Field((17,), "f")}, rows=total)
    kp = table[f"{det}/keypoints"][start:start + n].astype(np.float32)
    conf = table[f"{det}/confidence"][start:start + n].astype(np.float32)
    if size is not None:
        h0 = frames.shape[1]
        x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
        side = max(size)
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)  # square -> HD crop
        top = (side - size[0]) // 2
        left = (side - size[1]) // 2
        frames = x[:, :, top:top + size[0], left:left + size[1]].round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        scale = side / h0
        kp = (kp + 0.5) * scale - 0.5 - np.array([left, top], np.float32)
    video = tmp / f"clip_{frames.shape[2]}x{frames.shape[1]}.mp4"
    write_video(video, frames, fps=25.0, quality=9)
    keypoints = tmp / f"kp_{frames.shape[2]}.npz"
    np.savez(keypoints, keypoints=kp, confidence=conf)
    return video, keypoints, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="tiny mesh checkpoint (default: the train_mesh best.pt)")
    parser.add_argument("--online-checkpoint", type=Path, help="a tiny-online checkpoint for the --online rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=0, help="test sequence to use")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hmrmamba.config import find_project_root
    from hmrmamba.demo.inference import load_inference
    from hmrmamba.demo.pipeline import run_demo

    root = find_project_root()
    models = {"offline": load_inference(args.checkpoint, root=root)}
    if args.online_checkpoint:
        models["online"] = load_inference(args.online_checkpoint, root=root, need_causal=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp_name:
        tmp = Path(tmp_name)
        for size in (None, (720, 1280)):
            video, keypoints, n = make_inputs(root, tmp, sequence=args.sequence, size=size)
            sizes = (480, None) if size is None else (480, 320, None)  # pictures' longest side; None: none
            for mode, inf in models.items():
                for render in sizes:
                    best = None
                    for _ in range(args.repeats):
                        r = run_demo(video, tmp / "out", inference=inf, keypoints=keypoints, online=mode == "online",
                                     pictures=render is not None, render_size=render or 480, obj=True,
                                     progress=False)
                        if best is None or r.fps > best.fps:
                            best = r
                    what = "meshes + OBJ, no pictures" if render is None else (
                        f"all outputs, pictures {min(render, max(size or (128,)))} px")
                    rows.append((f"{video.stem.split('_')[1]}, {mode} ({inf.variant}), {what}", n, best))
    print(f"`hmrmamba demo` end to end, {torch.get_num_threads()} thread(s), keypoints from file, "
          f"model loaded beforehand; best of {args.repeats}.\n")
    print("| input, mode, outputs | frames | frames/s | " + " | ".join(STEPS) + " |")
    print("|---|---:|---:|" + "---:|" * len(STEPS))
    for label, n, r in rows:
        total = sum(r.seconds.values())
        shares = " | ".join(f"{r.seconds[s] / total:.0%}" if s in r.seconds else "–" for s in STEPS)
        print(f"| {label} | {n} | {r.fps:.1f} | {shares} |")


if __name__ == "__main__":
    main()
