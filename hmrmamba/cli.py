"""The ``hmrmamba`` console script.

Subcommands:
  info          versions, devices, whether mamba_ssm is usable, where data and stores live
  where         where the pipeline's outputs and stores are (printed after `make repro`)
  params        compose params.yaml from conf/ for a profile
  convert-smpl  convert a real SMPL .pkl (chumpy inside) into the project's .npz, safely
  preview       contact sheet of a prepared split
  stage         run one pipeline stage (same as `python -m hmrmamba.stages.NAME`)
  efficiency    Table 4: size, MACs, CPU speed, memory, scaling (the efficiency stage; --table reprints it)
  compare       compare MLflow runs across variants: table, CSV and bar chart under plots/
  demo          meshes, an overlay video and pictures from a video (offline windows or --online)
  export        meshes to OBJ/PLY/GLB, the body model template, or the model to TorchScript/ONNX
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path

from hmrmamba import __version__
from hmrmamba.errors import InputError

STAGES = ("body_model", "prepare", "detect2d", "train_backbone", "features", "train_lift", "train_mesh", "evaluate",
          "efficiency", "report")


def _root() -> Path | None:
    from hmrmamba.config import find_project_root

    try:
        return find_project_root()
    except InputError:
        return None


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from hmrmamba.ssm.backend import cpu_scan_status, mamba_ssm_available

    rows = [("hmrmamba", __version__), ("python", platform.python_version()), ("torch", torch.__version__)]
    for mod in ("numpy", "h5py", "smplx", "mlflow", "prefect", "dvc"):
        try:
            rows.append((mod, _version(mod)))
        except Exception as exc:  # report, do not crash: info is for diagnosing installs
            rows.append((mod, f"not importable ({exc.__class__.__name__})"))
    rows.append(("cpu threads", str(torch.get_num_threads())))
    cuda = torch.cuda.is_available()
    rows.append(("cuda", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                 if cuda else "not available"))
    rows.append(("mamba_ssm", "usable (fused CUDA kernels)" if mamba_ssm_available()
                 else "not usable (CUDA tensors use the PyTorch scan)"))
    rows.append(("cpu scan", cpu_scan_status()))
    from hmrmamba.allocator import keep_freed_memory
    rows.append(("allocator", f"stages and demo: {keep_freed_memory().description} (runtime.keep_freed_memory)"))
    from hmrmamba.demo.pose_models import model_status
    rows.append(("2d detector", model_status()))
    root = _root()
    rows.append(("project root", str(root) if root else "(not inside a checkout)"))
    if root:
        from hmrmamba.layout import Layout
        from hmrmamba.mlflow_runs import local_store_uri

        lay = Layout(root)
        rows += [("body model", _state(lay.body_model)), ("prepared data", _state(lay.prepared("train").parent)),
                 ("features", _state(lay.features("train").parent)), ("mlflow store", local_store_uri(root)),
                 ("prefect home", str(root / ".prefect"))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _version(module: str) -> str:
    """Installed distribution version (smplx has no ``__version__``), imported to prove it loads."""
    from importlib.metadata import version

    importlib.import_module(module)
    return version(module)


def _state(path: Path) -> str:
    return f"{path} ({'present' if path.exists() else 'not built yet'})"


def cmd_where(args: argparse.Namespace) -> int:
    from hmrmamba.layout import Layout
    from hmrmamba.mlflow_runs import local_store_uri

    root = _root()
    if root is None:
        print("not inside an hmrmamba checkout", file=sys.stderr)
        return 1
    lay = Layout(root)
    report = root / "reports/report.md"
    print(f"report      {report}" + ("" if report.exists() else "   (not yet: dvc repro report)"))
    print(f"results     {root / 'docs/results.md'}   (Tables 1-3 over variants: python flows/results.py)")
    print(f"data        {root / 'data'}")
    print(f"metrics     {root / 'metrics'}")
    print(f"plots       {root / 'plots'}")
    print(f"mlflow      {local_store_uri(root)}   (UI: mlflow server --host 127.0.0.1 "
          f"--backend-store-uri {local_store_uri(root)})")
    print(f"prefect     {root / '.prefect'}   (UI: PREFECT_HOME={root / '.prefect'} prefect server start "
          f"--host 127.0.0.1)")
    for stage in STAGES:
        m = lay.metrics(stage)
        if m.exists():
            print(f"{stage:<16}{m}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from hmrmamba.profiles import compose, write_params

    root = _root() or Path.cwd()
    path = write_params(root, compose(root, args.profile, args.overrides))
    print(f"wrote {path} (profile {args.profile})")
    return 0


def cmd_convert_smpl(args: argparse.Namespace) -> int:
    from hmrmamba.body.body_model import convert_smpl_pickle

    out = Path(args.output) if args.output else Path(args.pkl).with_suffix(".npz")
    convert_smpl_pickle(args.pkl, out)
    print(f"wrote {out}; set body_model.source: smpl and body_model.smpl_path: {out} in conf/config.yaml")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Contact sheet of a prepared split with its 2D keypoints: what the models see."""
    import numpy as np

    from hmrmamba.data.h5schema import read_split
    from hmrmamba.errors import InputError
    from hmrmamba.layout import Layout
    from hmrmamba.report.plots import contact_sheet
    from hmrmamba.skeleton import H36M17

    if args.sequences < 1:
        raise InputError(f"--sequences {args.sequences}", field="--sequences", expected="an integer >= 1")
    root = _root() or Path.cwd()
    split = read_split(Layout(root).prepared(args.split), with_images=True)
    starts, lens = split.seqs["seq_start"], split.seqs["seq_len"]
    picks = [int(starts[s] + (lens[s] * k) // 3) for s in range(min(args.sequences, split.num_seqs)) for k in range(3)]
    out = contact_sheet(args.output, split.frames["image"][picks],
                        keypoints=split.frames["joints2d"][picks] if args.keypoints else None,
                        parents=H36M17.parents, columns=6,
                        titles=[str(split.seqs["motion"][np.searchsorted(starts, i, "right") - 1]) for i in picks])
    print(f"wrote {out}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from hmrmamba.stages.common import main as stage_main

    module = importlib.import_module(f"hmrmamba.stages.{args.name}")
    stage_main(module.STAGE, module.run)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hmrmamba.config import find_project_root, load_params
    from hmrmamba.report.compare import compare, markdown_table

    root = find_project_root()
    table, csv, png = compare(root=root, stage=args.stage, by=args.group_by, latest=not args.all,
                              baseline=args.baseline, filter_string=args.filter, experiment=args.experiment,
                              out_dir=args.output_dir, tracking=load_params(root / "params.yaml").get("tracking"))
    print(markdown_table(table))
    print(f"wrote {csv} and {png}")
    return 0


def cmd_efficiency(args: argparse.Namespace) -> int:
    import json
    import logging

    from hmrmamba.config import find_project_root, load_params
    from hmrmamba.efficiency.benchmark import efficiency_table
    from hmrmamba.errors import MissingFileError
    from hmrmamba.layout import Layout
    from hmrmamba.stages import efficiency
    from hmrmamba.stages.common import execute

    root = find_project_root()
    if args.table:
        path = Layout(root).metrics(efficiency.STAGE)
        if not path.exists():
            raise MissingFileError("no efficiency metrics yet", file=path,
                                   expected="the output of `hmrmamba efficiency` or `dvc repro efficiency`")
        print(efficiency_table(json.loads(path.read_text(encoding="utf-8"))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(root / "params.yaml")
    if args.quick:
        params = {**params, efficiency.STAGE: {**params.get(efficiency.STAGE, {}), "quick": True}}
    if args.threads is not None:
        params = {**params, "runtime": {**params.get("runtime", {}), "threads": args.threads}}
    execute(efficiency.STAGE, efficiency.run, root=root, params=params)  # logs the table
    print(f"wrote {Layout(root).metrics(efficiency.STAGE)}; `hmrmamba efficiency --table` prints its table")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from hmrmamba.config import find_project_root, load_params
    from hmrmamba.report.results import write_document

    root = find_project_root()
    path = write_document(root, load_params(root / "params.yaml"), command="python flows/results.py")
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_reliability(args: argparse.Namespace) -> int:
    from hmrmamba.report import reliability
    argv = [*(["--slow"] if args.slow else []), *(["--no-audit"] if args.no_audit else []),
            *(["-o", args.output] if args.output else [])]
    return reliability.main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from hmrmamba.allocator import keep_freed_memory
    from hmrmamba.demo.pipeline import run_demo, summary_line

    keep_freed_memory()  # large activations reused, not mmapped anew per frame batch
    detector = args.detector or ("keypoints" if args.keypoints else "blazepose")
    result = run_demo(args.video, args.out, checkpoint=args.checkpoint, detector=detector, keypoints=args.keypoints,
                      online=args.online, ply=args.ply, obj=not args.no_obj, pictures=not args.no_pictures,
                      render_size=args.render_size,
                      focal=args.focal, detector_model=args.detector_model, progress=not args.quiet,
                      person=args.person, detector_tile=args.detector_tile, smooth=args.smooth,
                      align_features=not args.no_feature_align, fit=args.fit)
    for line in result.people:
        print(line)
    print(summary_line(result))
    if result.fit:
        print(f"body model fitted: {result.fit}; wrote animation.bvh, animation_rig.glb")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hmrmamba.demo import export
    if args.body_model:
        from hmrmamba.layout import Layout

        root = _root() or Path.cwd()
        path = export.export_body_model(Layout(root).body_model if args.body_model is True else args.body_model,
                                        args.out)
        print(f"wrote {path}")
        return 0
    if args.torchscript or args.onnx:
        from hmrmamba.demo.inference import load_inference

        export.check_frames(args.frames)  # before the model is loaded
        inf = load_inference(args.checkpoint)
        path, how = export.export_model(inf.model, args.out, fmt="onnx" if args.onnx else "torchscript",
                                        frames=args.frames, map_hw=inf.map_hw)
        print(f"wrote {path} ({inf.variant}, {how}, clips of {args.frames} frames; checked against the eager model)")
        return 0
    if not args.meshes or not args.format:
        raise InputError("nothing to export", field="arguments",
                         expected="--meshes DIR/meshes.npz --format obj|ply|glb, --body-model, --torchscript or --onnx")
    paths = export.export_meshes(args.meshes, fmt=args.format, out=args.out)
    print(f"wrote {paths[0] if len(paths) == 1 else f'{len(paths)} files in {args.out}'}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from hmrmamba.body.fitting import FitSettings
    from hmrmamba.demo.rig_export import fit_and_export
    from hmrmamba.layout import Layout

    body_model = args.body_model or Layout(_root() or Path.cwd()).body_model
    both = not (args.bvh or args.gltf)
    given = {"smooth_weight": args.smooth, "converged_mm": args.converged_mm}
    settings = FitSettings(**{k: v for k, v in given.items() if v is not None})
    result = fit_and_export(args.out_dir, body_model, settings=settings, bvh=args.bvh or both,
                            gltf=args.gltf or both)
    print(result.summary())
    if result.filled_translations:
        print(f"{result.filled_translations} frames had no camera translation: interpolated")
    print("wrote " + ", ".join(str(p) for p in result.files))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmrmamba", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, mamba_ssm, data locations").set_defaults(fn=cmd_info)
    sub.add_parser("where", help="where outputs and stores are").set_defaults(fn=cmd_where)
    p = sub.add_parser("params", help="compose params.yaml from conf/ for a profile")
    p.add_argument("--profile", default="default")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. synthetic.fps=30")
    p.set_defaults(fn=cmd_params)
    p = sub.add_parser("convert-smpl", help="convert a real SMPL .pkl to .npz without chumpy")
    p.add_argument("pkl")
    p.add_argument("-o", "--output")
    p.set_defaults(fn=cmd_convert_smpl)
    p = sub.add_parser("preview", help="contact sheet of a prepared split (frames + 2D joints)")
    p.add_argument("--split", default="test")
    p.add_argument("--sequences", type=int, default=6)
    p.add_argument("--keypoints", action="store_true", help="draw the ground-truth 2D skeleton")
    p.add_argument("-o", "--output", default="plots/preview.png")
    p.set_defaults(fn=cmd_preview)
    p = sub.add_parser("stage", help="run one pipeline stage")
    p.add_argument("name", choices=STAGES)
    p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("compare", help="compare finished MLflow runs of a stage, grouped by a tag or param")
    p.add_argument("--stage", default="evaluate", help="the stage whose runs to compare (tag `stage`)")
    p.add_argument("--group-by", "--by", dest="group_by", default="variant",
                   help="tag or param naming a row: variant, tags.detector2d, params.experiment.variant, "
                        "params.train_mesh.epochs, tags.dvc_exp, ...")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--latest", action="store_true", help="the latest finished run of each group (default)")
    which.add_argument("--all", action="store_true", help="every finished run, grouped")
    p.add_argument("--baseline", help="a group value or run id: show every metric minus that run's")
    p.add_argument("--filter", default="", help="extra MLflow filter, e.g. \"tags.flow = 'ablation'\"")
    p.add_argument("--experiment", help="only this MLflow experiment (default: all of them)")
    p.add_argument("--output-dir", default="plots", help="where compare_<stage>_by_<group>*.{csv,png} go")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("efficiency", help="Table 4: run the efficiency stage and print its table")
    p.add_argument("--quick", action="store_true", help="one run each, T <= 243 (efficiency.quick)")
    p.add_argument("--table", action="store_true", help="only print the table of metrics/efficiency.json")
    p.add_argument("--threads", type=int, help="torch threads for this run (default: runtime.threads)")
    p.set_defaults(fn=cmd_efficiency)
    sub.add_parser("results", help="re-render docs/results.md from the finished runs of flows/results.py"
                   ).set_defaults(fn=cmd_results)
    p = sub.add_parser("reliability", help="run the bad-input/fault/security suite, write docs/reliability.md "
                                           "(more options: python -m hmrmamba.report.reliability --help)")
    p.add_argument("--slow", action="store_true", help="also run the slow fault tests (whole-stage kills)")
    p.add_argument("--no-audit", action="store_true", help="skip pip-audit")
    p.add_argument("-o", "--output", help="markdown file to write (default docs/reliability.md)")
    p.set_defaults(fn=cmd_reliability)
    p = sub.add_parser("demo", help="meshes, overlay video and pictures from a video file or frame folder")
    p.add_argument("video", help="a video file (mp4/avi/...) or a folder of jpg/png frames")
    p.add_argument("--out", required=True, help="output folder (replaced as a whole when the demo succeeds)")
    p.add_argument("--checkpoint", help="mesh checkpoint (default: the train_mesh stage's best.pt)")
    p.add_argument("--detector", choices=("blazepose", "keypoints", "mediapipe"),
                   help="2D keypoints: BlazePose on LiteRT (installed with the project; the default), --keypoints "
                        "(the default when given) or the legacy MediaPipe package (hmrmamba[demo])")
    p.add_argument("--keypoints", help="npz with keypoints (N, 17, 2) px in H36M-17 order [and confidence (N, 17)]")
    p.add_argument("--person", type=int, help="follow the N-th most prominent person (0 = the default choice)")
    p.add_argument("--detector-tile", type=int, metavar="PX",
                   help="blazepose: also detect in PX-sized square tiles, for small people (default: squares of "
                        "the shorter side on a wide frame; 0: the whole frame only)")
    p.add_argument("--detector-model", help="blazepose: a folder with its model files; mediapipe: a "
                                            "pose_landmarker .task file")
    p.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian smoothing over time of the outputs, SIGMA frames (offline; default 0: none)")
    p.add_argument("--online", action="store_true", help="stream frame by frame (a causal checkpoint, e.g. tiny-online)")
    p.add_argument("--no-feature-align", action="store_true",
                   help="use the video's image features as they are (default: moved to the training features' "
                        "per-channel moments, docs/demo.md)")
    p.add_argument("--fit", action="store_true",
                   help="also fit the body model to the meshes and write animation.bvh and animation_rig.glb "
                        "(as `hmrmamba fit OUT`)")
    p.add_argument("--ply", action="store_true", help="also write per-frame PLY files")
    p.add_argument("--no-obj", action="store_true", help="do not write per-frame OBJ files")
    p.add_argument("--no-pictures", action="store_true", help="no overlay video, contact sheet or side view")
    p.add_argument("--render-size", type=int, default=480, help="longest side of the pictures, px")
    p.add_argument("--focal", type=float, help="focal length in px (default: the longer image side)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("export", help="meshes to OBJ/PLY/GLB, the body model, or the model to TorchScript/ONNX")
    p.add_argument("--meshes", help="DIR/meshes.npz written by `hmrmamba demo`")
    p.add_argument("--format", choices=("obj", "ply", "glb"), help="per-frame OBJ/PLY (a folder) or one GLB")
    p.add_argument("--body-model", nargs="?", const=True, default=None,
                   help="write the body model's template mesh (default: the project's data/body_model)")
    p.add_argument("--torchscript", action="store_true", help="export the model with torch.jit.trace")
    p.add_argument("--onnx", action="store_true", help="export the model to ONNX")
    p.add_argument("--checkpoint", help="model checkpoint for --torchscript/--onnx (default: the mesh best.pt)")
    p.add_argument("--frames", type=int, default=16, help="clip length the exported model takes")
    p.add_argument("--out", required=True, help="output file (GLB, .obj/.ply/.glb, .pt, .onnx) or folder")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("fit", help="fit body-model pose/shape to a demo's meshes: fit_* in meshes.npz, "
                                   "animation.bvh and a skinned animation_rig.glb")
    p.add_argument("out_dir", help="a folder written by `hmrmamba demo` (its meshes.npz)")
    p.add_argument("--body-model", help="SMPL-format .npz (default: the project's data/body_model)")
    p.add_argument("--bvh", action="store_true", help="write animation.bvh (default: both files)")
    p.add_argument("--gltf", action="store_true", help="write animation_rig.glb (default: both files)")
    p.add_argument("--smooth", type=float, help="weight of the temporal prior (0: none; default 0.5)")
    p.add_argument("--converged-mm", type=float,
                   help="a frame has converged when its mean vertex error is at most this (default 40)")
    p.set_defaults(fn=cmd_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hmrmamba.atomic import WriteFailed
    from hmrmamba.mlflow_runs import TrackingUnavailable

    try:
        return int(args.fn(args) or 0)
    except InputError as exc:
        print(f"hmrmamba {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (TrackingUnavailable, WriteFailed) as exc:
        print(f"hmrmamba {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
