"""Reading ``params.yaml`` and locating the project's directories.

``params.yaml`` is the single source of configuration; stages read their own section from it.
Paths in params are relative to the project root (the directory holding ``params.yaml``), or
absolute. A relative path that escapes the project root with ``..`` is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from hmrmamba.errors import InputError, MissingFileError

PARAMS_FILE = "params.yaml"


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding ``params.yaml``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / PARAMS_FILE).is_file():
            return d
    raise MissingFileError(f"no {PARAMS_FILE} found in {here} or its parents", file=PARAMS_FILE,
                           expected="to run inside an hmrmamba project checkout")


def home_root(root: Path) -> Path:
    """The checkout that owns shared stores, also from a DVC experiment temp copy.

    ``dvc exp run --temp`` runs in ``<repo>/.dvc/tmp/exps/...``; MLflow and Prefect stores must
    still land in ``<repo>``, so the part before ``/.dvc/tmp/`` is used.
    """
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    return root


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Load params.yaml (default: the project root's) with a safe, bounded YAML loader.

    Every key is then checked (:func:`validate_params`): values against :data:`PARAMS_SCHEMA`,
    names against :mod:`hmrmamba.settings` (unknown keys are refused in every section).
    """
    path = Path(path) if path else find_project_root() / PARAMS_FILE
    if not path.is_file():
        raise MissingFileError("file not found", file=path, expected="a params.yaml")
    data = load_yaml_bounded(path)
    if not isinstance(data, dict):
        raise InputError(f"top level is {type(data).__name__}", file=path, expected="a YAML mapping")
    validate_params(data, file=path)
    return data


# ---------------------------------------------------------------------------------------------
# A bounded YAML loader: small files only, shallow nesting, no alias expansion bombs
# ---------------------------------------------------------------------------------------------

#: Largest params file read (bytes); the committed params.yaml is about 5 KB.
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of mappings/sequences accepted (params.yaml nests 4 levels).
MAX_YAML_DEPTH = 64
#: Most nodes the document may hold once every alias is expanded (params.yaml has about 400).
MAX_YAML_NODES = 100_000


class _BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses nesting deeper than :data:`MAX_YAML_DEPTH` while composing
    (so 50k levels give an :class:`InputError`, never a ``RecursionError``)."""

    def __init__(self, stream: str, file: str | Path):
        super().__init__(stream)
        self._file = file
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise InputError(f"nesting deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})",
                                 file=self._file, expected="a params mapping nested a few levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node, file: str | Path) -> int:
    """Nodes of the document with every alias expanded, computed without expanding (shared nodes
    are counted once per use); refuses recursive aliases and documents over :data:`MAX_YAML_NODES`."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            if isinstance(node, yaml.MappingNode):
                kids = [x for pair in node.value for x in pair]
            else:
                kids = list(node.value)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[key] > MAX_YAML_NODES:
                raise InputError(f"expands to more than {MAX_YAML_NODES} nodes (aliases: "
                                 f"line {node.start_mark.line + 1})", file=file,
                                 expected="a params mapping without alias bombs")
            continue
        if key in sizes:
            continue
        if not isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            sizes[key] = 1
            continue
        if key in on_path:
            raise InputError(f"recursive alias (line {node.start_mark.line + 1})", file=file,
                             expected="a params mapping without recursive aliases")
        on_path.add(key)
        stack.append((node, True))
        kids = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else node.value
        for kid in kids:
            if id(kid) in on_path:
                raise InputError(f"recursive alias (line {kid.start_mark.line + 1})", file=file,
                                 expected="a params mapping without recursive aliases")
            if id(kid) not in sizes:
                stack.append((kid, False))
    return sizes[id(root)]


def load_yaml_bounded(path: str | Path, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The YAML document in ``path``, read with a safe loader under size, depth and expansion limits.

    Raises :class:`InputError` (one line, naming the file) for a file over ``max_bytes``, non-UTF-8
    text, invalid YAML, nesting deeper than :data:`MAX_YAML_DEPTH` or more than
    :data:`MAX_YAML_NODES` nodes once aliases are expanded (a "billion laughs" alias bomb).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InputError(f"larger than {max_bytes} bytes", file=path, expected="a small YAML mapping")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path,
                         expected="a UTF-8 YAML mapping") from None
    loader = _BoundedSafeLoader(text, path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise InputError(f"invalid YAML ({first[:300]})", file=path, expected="a YAML mapping") from None
    except RecursionError:  # not reached under MAX_YAML_DEPTH; kept so no traceback can escape
        raise InputError("nesting too deep", file=path, expected="a params mapping nested a few levels deep"
                         ) from None
    finally:
        loader.dispose()


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded ``repr`` for error messages: never walks more than a few items of a huge value."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 4, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# The params schema: the type and a sane range of every known key, checked before any work
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """What one params key may hold.

    ``kind``: ``int``, ``num`` (finite int or float), ``bool``, ``str``, ``path`` (an input path),
    ``outpath`` (an output path: relative without ``..`` escapes, or absolute), ``outdir`` (a directory
    that is replaced as a whole: also not the project root nor one of its own directories),
    ``range`` (``[lo, hi]`` of ``item`` with lo <= hi), ``list`` (of ``item``) or ``map`` (str keys,
    values of ``item``).
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    item: Rule | None = None
    nonempty: bool = False

    def describe(self) -> str:
        if self.kind in ("int", "num"):
            what = "an integer" if self.kind == "int" else "a finite number"
            text = f"{what} in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}]"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = f"one of {list(self.choices)}" if self.choices else "a non-empty string"
        elif self.kind == "path":
            text = "a path (relative to the project root, or absolute)"
        elif self.kind == "outpath":
            text = "an output path inside the project (no '..' escapes), or an absolute path"
        elif self.kind == "outdir":
            text = (f"a directory of its own inside the project (no '..' escapes, not the project root "
                    f"nor {sorted(PROJECT_DIRS)})")
        elif self.kind == "range":
            text = f"[min, max] with min <= max, each {self.item.describe()}"
        elif self.kind == "list":
            text = f"a {'non-empty ' if self.nonempty else ''}list, each {self.item.describe()}"
        else:
            text = f"a {'non-empty ' if self.nonempty else ''}mapping" + (
                f" of names to {self.item.describe()}" if self.item else "")
        return text + (" or null" if self.optional else "")

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.optional
        k = self.kind
        if k in ("int", "num"):
            if isinstance(v, bool) or not isinstance(v, int if k == "int" else (int, float)):
                return False
            if isinstance(v, float) and not math.isfinite(v):
                return False
            return (v > self.lo if self.lo_open else v >= self.lo) and v <= self.hi
        if k == "bool":
            return isinstance(v, bool)
        if k == "str":
            return isinstance(v, str) and bool(v.strip()) and (not self.choices or v in self.choices)
        if k in ("path", "outpath", "outdir"):
            if not isinstance(v, str) or not v.strip() or "\x00" in v:
                return False
            first = os.path.normpath(v).split(os.sep)[0]
            if k == "outdir":
                return not os.path.isabs(v) and first not in PROJECT_DIRS | {".", ".."}
            return k == "path" or os.path.isabs(v) or first != ".."
        if k == "range":
            return (isinstance(v, (list, tuple)) and len(v) == 2 and all(self.item.accepts(x) for x in v)
                    and v[0] <= v[1])
        if k == "list":
            return (isinstance(v, (list, tuple)) and (bool(v) or not self.nonempty)
                    and all(self.item.accepts(x) for x in v))
        return (isinstance(v, Mapping) and (bool(v) or not self.nonempty)
                and all(isinstance(x, str) for x in v)
                and (self.item is None or all(self.item.accepts(x) for x in v.values())))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _int(lo: int, hi: int, **kw: Any) -> Rule:
    return Rule("int", lo, hi, **kw)


def _num(lo: float, hi: float, **kw: Any) -> Rule:
    return Rule("num", lo, hi, **kw)


#: Top-level directories of a checkout that no output directory may replace.
PROJECT_DIRS = frozenset({"data", "models", "metrics", "plots", "conf", "docs", "hmrmamba", "tests", "flows",
                          "tasks", "benchmarks", "mlartifacts", ".dvc", ".git", ".prefect", ".venv"})
_SEED = _int(0, 2**32 - 1)
_STR = Rule("str")
_BOOL = Rule("bool")
_OPT_PATH = Rule("path", optional=True)
_COUNT = _int(1, 65536)


def _train_rules(stage: str) -> dict[str, Rule]:
    return {f"{stage}.{k}": r for k, r in {
        "epochs": _int(1, 1_000_000), "batch_size": _COUNT, "lr": _num(0, 10, lo_open=True),
        "weight_decay": _num(0, 10), "lr_decay": _num(0, 1, lo_open=True), "ema": _num(0, 0.99999), "window": _int(1, 8192),
        "stride": _int(1, 8192), "grad_clip": _num(0, 1e6, optional=True), "amp": _BOOL, "compile": _BOOL,
        "resume": _BOOL, "log_checkpoint": _BOOL, "seed": _SEED, "checkpoint_dir": Rule("outpath"),
        "loss": Rule("map", item=_num(0, 1e6)),
    }.items()}


#: Known params keys (``*`` matches any name) and what they may hold; unknown keys are not checked.
PARAMS_SCHEMA: dict[str, Rule] = {
    "seed": _SEED,
    "runtime.threads": _int(0, 4096),
    "runtime.keep_freed_memory": _BOOL,
    "flows.workers": _int(1, 4096, optional=True),
    "flows.scheduler": Rule("str", optional=True),
    "tracking.uri": Rule("str", optional=True),
    "tracking.fallback_local": _BOOL,
    "dataset.name": _STR,
    "dataset.root": _OPT_PATH,
    "body_model.source": Rule("str", choices=("procedural", "smpl")),
    "body_model.smpl_path": _OPT_PATH,
    "body_model.h36m_regressor": _OPT_PATH,
    "body_model.downsampling_path": _OPT_PATH,
    "body_model.downsample_sizes": Rule("list", item=_int(8, 1_000_000), nonempty=True),
    "body_model.seed": _SEED,
    "synthetic.splits": Rule("map", nonempty=True),
    "synthetic.splits.*.sequences": _int(1, 1_000_000),
    "synthetic.splits.*.subjects": _int(1, 1_000_000),
    "synthetic.frames": Rule("range", item=_int(1, 1_000_000)),
    "synthetic.fps": _num(0, 1000, lo_open=True),
    "synthetic.image_size": _int(16, 4096),
    "synthetic.occluder_prob": _num(0, 1),
    "synthetic.blur_prob": _num(0, 1),
    "synthetic.appearance": Rule("str", choices=("clothing", "parts")),
    "synthetic.betas_scale": _num(0, 10),
    "synthetic.max_travel": _num(0, 100),
    "synthetic.seed": _SEED,
    "synthetic.mocap.bvh_dir": _OPT_PATH,
    "synthetic.mocap.amass_dir": _OPT_PATH,
    "synthetic.mocap.up": Rule("str", choices=("y", "z")),
    "synthetic.camera.distance": Rule("range", item=_num(0, 1000, lo_open=True)),
    "synthetic.camera.height": Rule("range", item=_num(-1000, 1000)),
    "synthetic.camera.yaw_deg": Rule("range", item=_num(-720, 720)),
    "synthetic.camera.person_fraction": Rule("range", item=_num(0, 2, lo_open=True)),
    "synthetic.camera.pitch_deg": Rule("range", item=_num(-90, 90)),
    "synthetic.camera.roll_deg": Rule("range", item=_num(-180, 180)),
    "synthetic.camera.focal": Rule("range", item=_num(0, 100, lo_open=True), optional=True),
    "synthetic.camera.partial_prob": _num(0, 1),
    "synthetic.camera.partial_cut": Rule("range", item=_num(0, 0.95)),
    "detect2d.sources": Rule("list", item=_STR, nonempty=True),
    "detect2d.noise_scale": _num(0, 100),
    "detect2d.files": Rule("map", item=Rule("path")),
    "detect2d.seed": _SEED,
    "features.backbone": _STR,
    "features.weights": _OPT_PATH,
    "features.init_seed": _SEED,
    "features.bbox_source": _STR,
    "features.bbox_scale": _num(0, 10, lo_open=True),
    "features.crop_size": _int(32, 1024),
    "features.batch_size": _COUNT,
    "features.keep_spatial": _BOOL,
    "features.map_layer": Rule("str", choices=("layer3", "layer4")),
    "train_backbone.enabled": _BOOL,
    "train_backbone.epochs": _int(1, 100_000),
    "train_backbone.batch_size": _COUNT,
    "train_backbone.lr": _num(0, 10, lo_open=True),
    "train_backbone.weight_decay": _num(0, 10),
    "train_backbone.warmup": _num(0, 1, lo_open=True),
    "train_backbone.min_lr_ratio": _num(0, 1),
    "train_backbone.grad_clip": _num(0, 1e6, optional=True, lo_open=True),
    "train_backbone.precision": Rule("str", choices=("auto", "bf16", "fp32")),
    "train_backbone.flip": _num(0, 1),
    "train_backbone.color": _BOOL,
    "train_backbone.box_scale": Rule("range", item=_num(0, 10, lo_open=True)),
    "train_backbone.box_shift": _num(0, 1),
    "train_backbone.val_frames": _int(1, 10_000_000),
    "train_backbone.seed": _SEED,
    "train_backbone.resume": _BOOL,
    "train_backbone.checkpoint_dir": Rule("outpath"),
    "train_backbone.loss": Rule("map", item=_num(0, 1e6)),
    "experiment.variant": _STR,
    "experiment.detector": _STR,
    "experiment.overrides": Rule("map"),
    **_train_rules("train_lift"),
    **_train_rules("train_mesh"),
    "train_mesh.loss_frames": _int(1, 8192, optional=True),
    "train_lift.flip": _num(0, 1),
    "features.image_root": _OPT_PATH,
    "evaluate.split": _STR,
    "evaluate.batch_size": _COUNT,
    "report.dir": Rule("outdir"),
    "report.clips": _int(0, 10_000),
    "report.frames_per_clip": _int(1, 10_000),
    "results.output": Rule("outpath"),
    "results.seeds": Rule("list", item=_SEED, nonempty=True),
    "efficiency.frames": _int(1, 1_000_000),
    "efficiency.batch": _COUNT,
    "efficiency.repeats": _int(1, 10_000),
}


def _present(node: Any, parts: list[str], prefix: tuple[str, ...], file: str | Path
             ) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every present key matching ``parts`` (``*`` = any name)."""
    if not parts:
        yield ".".join(prefix), node
        return
    if not isinstance(node, Mapping):
        raise InputError(f"is a {type(node).__name__}", file=file, field=".".join(prefix),
                         expected="a mapping of settings")
    head, rest = parts[0], parts[1:]
    for key in (list(node) if head == "*" else [head] if head in node else []):
        yield from _present(node[key], rest, prefix + (str(key),), file)


def validate_params(params: Mapping[str, Any], *, file: str | Path = PARAMS_FILE) -> None:
    """Check ``params``: every value against :data:`PARAMS_SCHEMA`, every key against the typed
    settings (:func:`hmrmamba.settings.parse_settings`: unknown keys are refused in every section,
    nested ones included); absent keys are fine (they take the settings' defaults).

    Raises :class:`InputError` naming the file, the dotted key and what it may hold, so absurd
    values (negative sizes, NaN rates, strings for numbers, ``..`` output paths) and typos
    (``train_lift.epocs``) stop a stage before it reads or writes anything.
    """
    from hmrmamba.settings import parse_settings

    parse_settings(params, file=file)


def check_values(params: Mapping[str, Any], *, file: str | Path = PARAMS_FILE) -> None:
    """Check every present key of ``params`` that :data:`PARAMS_SCHEMA` has a rule for."""
    for pattern, rule in PARAMS_SCHEMA.items():
        for key, value in _present(params, pattern.split("."), (), file):
            if not rule.accepts(value):
                raise InputError(f"invalid value {short_repr(value)}", file=file, field=key,
                                 expected=rule.describe())


def section(params: Mapping[str, Any], name: str, *, file: str = PARAMS_FILE) -> dict[str, Any]:
    """One top-level section of params, with a clear error when it is absent."""
    if name not in params or not isinstance(params[name], Mapping):
        raise InputError(f"missing section '{name}'", file=file, field=name, expected="a mapping")
    return dict(params[name])


def _path_value(value: Any, *, field: str, file: str | Path = PARAMS_FILE) -> str:
    """A params path as a string; anything else (numbers, lists, NUL bytes, '') is an InputError."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InputError(f"{value!r} is not a usable path", file=file, field=field,
                         expected="a non-empty path string (relative to the project root, or absolute)")
    return value


def resolve_path(root: Path, value: str | os.PathLike, *, field: str) -> Path:
    """Resolve a params path inside ``root`` (relative) or as given (absolute); refuse ``..`` escapes."""
    p = Path(_path_value(value, field=field))
    if p.is_absolute():
        return p
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise InputError(f"path '{value}' escapes the project root {root}", file=PARAMS_FILE,
                         field=field, expected="a path inside the project, or an absolute path")
    return full


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
