"""Table 4 measurements: size, cost, speed, peak memory and scaling in T of the model family.

Everything is measured in one process on the same torch threads, with random inputs of the real
shapes (:func:`hmrmamba.efficiency.flops.clip_inputs`) and random mesh assets of the real sizes
(:func:`hmrmamba.models.random_mesh_assets`); speed does not depend on the weights' values.

Methods (also written into the metrics so that a table never loses them):

- **Size**: :func:`hmrmamba.efficiency.flops.count_parameters` of the full model (buffers excluded).
- **Cost**: :func:`hmrmamba.efficiency.flops.count_cost`, one forward of one clip, batch 1. ``gflops`` are
  ``FlopCounterMode`` FLOPs (2 per multiply-add, plus the formulas ``flops`` adds for the selective
  scan, CPU attention, ``grid_sample`` and sparse matmul); ``gmacs = gflops / 2`` is the fvcore/thop
  multiply-add count, the convention of the paper's "GFlops" column. ``scan_gmacs`` is the selective
  scan's share, counted independently with forward hooks on every ``Mamba`` call.
- **Speed**: wall time of ``model(**inputs)`` under ``torch.inference_mode``; ``warmup`` untimed
  rounds, then ``repeats`` timed ones; the median is reported with the best run, and every run is
  kept. The models of one table are timed in turn (a, b, c, a, b, c, ...), so a change of the
  machine's load hits them alike and their ratios stay meaningful. CPU time of the process is kept
  next to it: on a machine shared with other jobs, wall >> CPU / threads shows that the threads
  waited for cores. CUDA timings synchronise before reading the clock.
- **Peak memory** (CPU): the largest number of bytes the CPU allocator held *above the level before
  the call* during one forward, read from the allocation events of ``torch.profiler`` with
  ``profile_memory=True`` (activations and temporaries; weights and inputs excluded). Next to it,
  ``rss_delta_mb``: the rise of the process's peak resident set (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``) over one forward, which includes the allocator's own behaviour and is
  ``None`` where the kernel does not allow the reset. CUDA: ``torch.cuda.max_memory_allocated``.
- **Scan speed-up**: forward+backward time of :func:`hmrmamba.ssm.scan.selective_scan` against
  :func:`hmrmamba.ssm.scan.selective_scan_ref` (the step-by-step formulation of ``mamba_ssm``'s
  reference) on the inputs of one Mamba block. The reference's backward is quadratic in L (every
  step's ``select`` backward writes a full-size gradient), so on a CPU it is timed on ``ref_batch``
  sequences and the speed-up is the ratio at that same batch.
- **Rate** (how close to the machine's limit): ``gmacs_per_s`` = multiply-adds of the timed call (MACs of one
  clip x batch) / its median wall time, per model and per scaling row (the lifter's own MACs there);
  ``matmul`` = the best GFLOP/s of a square float32 ``torch.mm`` (2 n^3 FLOPs) on the same threads, and
  ``pct_of_matmul_peak`` = 100 x 2 x GMAC/s / matmul GFLOP/s (FLOPs at 2 per multiply-add, like the matmul's).
  ``cpu_scan`` names the selective scan CPU tensors ran (:func:`hmrmamba.ssm.backend.cpu_scan_status`).
- **Online step**: one frame of ``tiny-online`` (``model.step``, recurrent state carried) against one 16-frame
  window of ``tiny`` (``model(**clip)``), full models, random weights, timed in turn.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.settings import EfficiencySection, LinearSettings, ScalingSettings, ScanSettings

__all__ = [
    "DEFAULT_VARIANTS",
    "EfficiencySettings",
    "PAPER_TABLE4",
    "Timing",
    "check_targets",
    "count_scan_macs",
    "cpu_model_name",
    "efficiency_table",
    "gmacs_per_s",
    "machine_info",
    "matmul_flops",
    "measure_efficiency",
    "measure_matmul",
    "measure_online_step",
    "measure_scaling",
    "measure_variant",
    "measure_variants",
    "pct_of_matmul_peak",
    "peak_forward_memory",
    "profile_forward",
    "rss_peak_delta_mb",
    "scaling_macs",
    "scan_inputs",
    "scan_macs_of",
    "scan_speedup",
    "settings_from_params",
    "time_call",
    "time_forward",
    "time_models",
]

DEFAULT_VARIANTS = EfficiencySection.variants

#: The paper's Table 4: (#P in millions, "GFlops" per 16-frame clip).
PAPER_TABLE4: dict[str, tuple[float, float]] = {
    "pmce": (102.80, 6.77),
    "hmrmamba-s-vanilla": (79.63, 7.53),
    "hmrmamba-s": (79.63, 7.88),
    "hmrmamba-l": (89.04, 9.32),
}

#: The issue's targets: (key, threshold, "min" | "max").
TARGETS: tuple[tuple[str, float, str], ...] = (
    ("scan_speedup", 10.0, "min"),
    ("s_vs_pmce_t16", 1.0, "min"),
    ("s_vs_pmce_t243", 2.0, "min"),
    ("linear_time_ratio", 2.2, "max"),
    ("linear_macs_ratio", 2.2, "max"),
    ("s_vs_pmce_gmacs_per_s_t243", 0.9, "min"),
    ("online_step_vs_window", 0.3, "max"),
)

#: Square float32 matmul size of the machine's reference rate, and its timed runs after one warm-up.
MATMUL_N = 1024
MATMUL_REPEATS = 5

#: The streaming comparison: (causal variant stepped frame by frame, offline variant, its window length).
ONLINE_PAIR = ("tiny-online", "tiny", 16)
#: Steps per timed run of the online variant (one step is short; the run's time / steps is a step's time).
ONLINE_STEPS = 16
#: Fewest timed runs of the online comparison outside ``quick`` (both calls are short; more runs steady the median).
ONLINE_REPEATS = 7

TIMING_METHOD = ("wall clock of model(**inputs) under torch.inference_mode, median (latency_ms) and best "
                 "(best_ms) of `repeats` runs after `warmup` untimed rounds, the models timed in turn (round "
                 "robin) so that load changes hit all alike (CUDA: synchronised); cpu_ms = process CPU time, "
                 "all threads")
MEMORY_METHOD = ("peak_mem_mb: torch.profiler(profile_memory=True) CPU allocation events, max bytes held above "
                 "the level before the forward (activations + temporaries, no weights); rss_delta_mb: VmHWM "
                 "rise over one forward after resetting it via /proc/self/clear_refs (None if unsupported); "
                 "CUDA: torch.cuda.max_memory_allocated above the level before")
RATE_METHOD = ("gmacs_per_s = MACs of the timed call (one clip x batch) / median wall time / 1e9; matmul: best "
               "GFLOP/s of a square float32 torch.mm (2 n^3 FLOPs) after a warm-up, same threads; "
               "pct_of_matmul_peak = 100 x 2 x gmacs_per_s / matmul gflops_per_s")
ONLINE_METHOD = ("step_ms: median over runs of (wall time of `steps` consecutive model.step calls of the causal "
                 "variant, state carried) / steps; window_ms: median wall time of one forward of the offline "
                 "variant on a clip of `window` frames; the two timed in turn; full models, random weights, "
                 "batch 1")
COST_METHOD = ("hmrmamba.efficiency.flops.count_cost (FlopCounterMode + formulas for the selective scan, CPU attention, "
               "grid_sample, sparse matmul); gflops = 2 per multiply-add, gmacs = gflops / 2")


@dataclass(frozen=True)
class EfficiencySettings:
    """What the ``efficiency`` stage measures (``params.yaml: efficiency``)."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    # every default is the params schema's (hmrmamba.settings), flattened: one place to change it
    frames: int = EfficiencySection.frames
    batch: int = EfficiencySection.batch
    repeats: int = EfficiencySection.repeats
    warmup: int = EfficiencySection.warmup
    profile_rows: int = EfficiencySection.profile_rows
    quick: bool = EfficiencySection.quick
    cuda: bool = EfficiencySection.cuda
    scaling_variants: tuple[str, ...] = ScalingSettings.variants
    scaling_frames: tuple[int, ...] = ScalingSettings.frames
    scaling_scope: str = ScalingSettings.scope  # "lifter" (stage 1 only) or "full"
    scaling_repeats: int = ScalingSettings.repeats
    scaling_warmup: int = ScalingSettings.warmup
    scaling_profile_frames: int = ScalingSettings.profile_frames  # profile the scaling models at this T (0: do not)
    linear_variant: str = LinearSettings.variant
    linear_frames: tuple[int, int] = LinearSettings.frames
    scan_batch: int = ScanSettings.batch
    scan_dim: int = ScanSettings.dim
    scan_length: int = ScanSettings.length
    scan_dstate: int = ScanSettings.dstate
    scan_repeats: int = ScanSettings.repeats
    scan_ref_batch: int = ScanSettings.ref_batch
    scan_ref_repeats: int = ScanSettings.ref_repeats

    def effective(self) -> EfficiencySettings:
        """``quick``: one timed run everywhere, no warm-up, T <= 243 in the scaling, ref scan on <= 4 sequences."""
        if not self.quick:
            return self
        return replace(self, repeats=1, warmup=0, scaling_repeats=1, scaling_warmup=0, scan_repeats=1,
                       scan_ref_repeats=1, scan_ref_batch=min(self.scan_ref_batch, 4),
                       scaling_frames=tuple(t for t in self.scaling_frames if t <= 243) or self.scaling_frames[:1])


def settings_from_params(p: Mapping[str, Any], *, file: str = "params.yaml") -> EfficiencySettings:
    """``EfficiencySettings`` from the ``efficiency`` section; unknown keys or bad values raise ``InputError``."""
    from hmrmamba.models import variant_names

    flat: dict[str, Any] = {}
    for key, value in p.items():
        if key in ("scaling", "linear", "scan"):
            if not isinstance(value, Mapping):
                raise InputError(f"is {value!r}", file=file, field=f"efficiency.{key}", expected="a mapping")
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    known = set(EfficiencySettings.__dataclass_fields__)
    unknown = sorted(set(flat) - known)
    if unknown:
        raise InputError(f"unknown keys {unknown}", file=file, field="efficiency",
                         expected=f"keys among {sorted(known)} (scaling_*, linear_*, scan_* nested)")
    for key in ("variants", "scaling_variants", "scaling_frames", "linear_frames"):
        if key in flat:
            if not isinstance(flat[key], (list, tuple)) or not flat[key]:
                raise InputError(f"is {flat[key]!r}", file=file, field=f"efficiency.{key}",
                                 expected="a non-empty list")
            flat[key] = tuple(flat[key])
    s = EfficiencySettings(**flat)
    names = set(variant_names())
    for key, values in (("variants", s.variants), ("scaling_variants", s.scaling_variants),
                        ("linear_variant", (s.linear_variant,))):
        bad = [v for v in values if v not in names]
        if bad:
            raise InputError(f"unknown variants {bad}", file=file, field=f"efficiency.{key}",
                             expected=f"names among {sorted(names)}")
    ints = {k: getattr(s, k) for k in ("frames", "batch", "repeats", "scan_batch", "scan_dim", "scan_length",
                                       "scan_dstate", "scan_repeats", "scan_ref_batch", "scan_ref_repeats",
                                       "scaling_repeats")}
    ints |= {f"scaling_frames[{i}]": t for i, t in enumerate(s.scaling_frames)}
    ints |= {f"linear_frames[{i}]": t for i, t in enumerate(s.linear_frames)}
    for key, value in ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"is {value!r}", file=file, field=f"efficiency.{key}", expected="an integer >= 1")
    for key in ("warmup", "scaling_warmup", "scaling_profile_frames", "profile_rows"):
        value = getattr(s, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"is {value!r}", file=file, field=f"efficiency.{key}", expected="an integer >= 0")
    if len(s.linear_frames) != 2:
        raise InputError(f"is {list(s.linear_frames)}", file=file, field="efficiency.linear.frames",
                         expected="two lengths [T1, T2], e.g. [243, 486]")
    if s.scaling_scope not in ("lifter", "full"):
        raise InputError(f"is {s.scaling_scope!r}", file=file, field="efficiency.scaling.scope",
                         expected="'lifter' or 'full'")
    if s.scan_ref_batch > s.scan_batch:
        raise InputError(f"is {s.scan_ref_batch} > scan.batch={s.scan_batch}", file=file,
                         field="efficiency.scan.ref_batch", expected="<= efficiency.scan.batch")
    return s


# ----------------------------------------------------------------------------------------------
# machine


def cpu_model_name() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, torch threads and version, load average now."""
    info: dict[str, Any] = {"cpu": cpu_model_name(), "logical_cpus": os.cpu_count(),
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# ----------------------------------------------------------------------------------------------
# timing and memory


@dataclass
class Timing:
    """Wall and process-CPU seconds of every timed run of a call processing ``batch`` clips."""

    wall_s: list[float]
    cpu_s: list[float]
    batch: int = 1

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def latency_ms(self) -> float:
        return self.median_s * 1e3

    @property
    def clips_per_s(self) -> float:
        return self.batch / self.median_s

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": round(self.latency_ms, 3), "clips_per_s": round(self.clips_per_s, 4),
                "best_ms": round(min(self.wall_s) * 1e3, 3), "cpu_ms": round(statistics.median(self.cpu_s) * 1e3, 3),
                "runs_ms": [round(t * 1e3, 3) for t in self.wall_s]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int = 0, batch: int = 1,
              device: torch.device | str = "cpu") -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (CUDA synchronised)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(wall_s=wall, cpu_s=cpu, batch=batch)


def time_forward(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, repeats: int, warmup: int = 0,
                 forward_kwargs: Mapping[str, Any] | None = None) -> Timing:
    """Inference timing of ``model(**inputs)``; inputs: clip tensors (B, T, ...) on the model's device."""
    model.eval()
    first = next(iter(inputs.values()))
    kwargs = dict(forward_kwargs or {})
    with torch.inference_mode():
        return time_call(lambda: model(**inputs, **kwargs), repeats=repeats, warmup=warmup,
                         batch=int(first.shape[0]), device=first.device)


def _allocation_peak_bytes(prof: Any) -> int | None:
    """Largest CPU bytes held above the starting level, from a profiler run's allocation events."""
    try:
        from torch._C._profiler import _EventType

        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, ImportError, RuntimeError):
        return None
    events: list[tuple[int, int, int]] = []
    stack = list(roots)
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation:
            f = ev.extra_fields
            if f.device.type == "cpu":
                events.append((ev.start_time_ns, int(f.alloc_size), int(f.total_allocated)))
        stack.extend(ev.children)
    if not events:
        return None
    events.sort()
    base = events[0][2] - events[0][1]
    return max(0, max(total for _, _, total in events) - base)


#: Profiler event names (lower case, no underscores) of the selective scan: PyTorch's and the fused C one.
SCAN_EVENT_NAMES = ("selectivescan", "fusedscanfn")


def _is_scan_event(key: str) -> bool:
    """Whether a profiler event is a selective scan call (PyTorch or fused C)."""
    name = key.lower().replace("_", "")
    return any(s in name for s in SCAN_EVENT_NAMES)


def profile_forward(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, rows: int = 8,
                    forward_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One profiled CPU inference forward: ``peak_mem_mb`` (allocator events), the ``top_ops`` by self CPU
    time and ``scan_share``, the share of the profiled time spent inside the selective scan."""
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    kwargs = dict(forward_kwargs or {})
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**inputs, **kwargs)
    peak = _allocation_peak_bytes(prof)
    out: dict[str, Any] = {"peak_mem_mb": None if peak is None else round(peak / 2**20, 2)}
    if rows:
        avgs = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in avgs) or 1.0
        out["top_ops"] = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": int(e.count),
                           "share": round(e.self_cpu_time_total / total, 3)} for e in avgs[:rows]]
        scan = [e.cpu_time_total for e in avgs if _is_scan_event(e.key)]
        out["scan_share"] = round(max(scan, default=0.0) / total, 3)  # inclusive time of the scan calls
    return out


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_peak_delta_mb(fn: Callable[[], Any]) -> float | None:
    """Rise of the process's peak RSS over ``fn()`` (MB), after resetting the peak; ``None`` if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    except OSError:
        return None
    before = _read_status_kb("VmRSS")
    fn()
    after = _read_status_kb("VmHWM")
    if before is None or after is None:
        return None
    return round(max(0, after - before) / 1024, 2)


def peak_forward_memory(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Peak memory of one inference forward: CPU via :func:`profile_forward` and RSS, CUDA via the allocator stats."""
    first = next(iter(inputs.values()))
    model.eval()
    if first.device.type == "cuda":
        torch.cuda.synchronize(first.device)
        base = torch.cuda.memory_allocated(first.device)
        torch.cuda.reset_peak_memory_stats(first.device)
        with torch.inference_mode():
            model(**inputs)
        torch.cuda.synchronize(first.device)
        return {"peak_mem_mb": round((torch.cuda.max_memory_allocated(first.device) - base) / 2**20, 2)}
    out = profile_forward(model, inputs, rows=0)
    with torch.inference_mode():
        out["rss_delta_mb"] = rss_peak_delta_mb(lambda: model(**inputs))
    return out


# ----------------------------------------------------------------------------------------------
# cost


@contextlib.contextmanager
def count_scan_macs(model: nn.Module) -> Iterator[list[int]]:
    """While open, add the multiply-adds of every ``Mamba`` call's selective scan to the yielded ``[total]``."""
    from hmrmamba.efficiency.flops import scan_macs
    from hmrmamba.ssm.mamba import Mamba

    total = [0]

    def hook(module: Mamba, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        b, length = args[0].shape[:2]  # hidden_states (B, L, d_model)
        total[0] += scan_macs(int(b), int(length), module.d_inner, module.d_state)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Mamba)]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def scan_macs_of(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """Multiply-adds of every selective scan in one forward of ``model(**inputs)`` (clip tensors (B, T, ...))."""
    model.eval()
    with count_scan_macs(model) as total, torch.inference_mode():
        model(**inputs)
    return total[0]


def _clip_for(model: nn.Module, *, frames: int, batch: int, device: torch.device | str = "cpu",
              seed: int = 0) -> dict[str, torch.Tensor]:
    from hmrmamba.efficiency.flops import model_clip_inputs

    return model_clip_inputs(model, batch=batch, frames=frames, seed=seed, device=device)


def _build(name: str, *, assets: Any, lift_only: bool = False, max_frames: int | None = None) -> nn.Module:
    from hmrmamba.models import build

    overrides = {} if max_frames is None else {"max_frames": max_frames}
    model = build(name, assets=None if lift_only else assets, lift_only=lift_only, **overrides)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# measurements


def _describe(name: str, *, assets: Any, frames: int, batch: int, profile_rows: int, device: torch.device,
              count: bool) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Build ``name`` and measure everything but its speed: (model, inputs, size/cost/memory dict)."""
    from hmrmamba.efficiency.flops import count_cost, count_parameters

    model = _build(name, assets=assets, max_frames=max(frames, 16)).to(device)
    inputs = _clip_for(model, frames=frames, batch=batch, device=device)
    out: dict[str, Any] = {"frames": frames, "batch": batch, "device": str(device)}
    params = count_parameters(model)
    out |= {"params": params, "params_m": round(params / 1e6, 4),
            "weights_mb": round(sum(t.numel() * t.element_size()
                                    for t in [*model.parameters(), *model.buffers()]) / 2**20, 2)}
    if device.type == "cpu":  # first forward of the fresh model: its RSS rise is the least hidden by reuse
        with torch.inference_mode():
            out["rss_delta_mb"] = rss_peak_delta_mb(lambda: model(**inputs))
    if count:
        one = _clip_for(model, frames=frames, batch=1, device=device)
        with count_scan_macs(model) as scan:
            cost = count_cost(model, one)
        out |= {"macs": cost.macs, "gmacs": round(cost.gmacs, 4), "flops": cost.flops,
                "gflops": round(cost.gflops, 4), "scan_gmacs": round(scan[0] / 1e9, 4)}
        if name in PAPER_TABLE4 and frames == 16:
            p_m, p_g = PAPER_TABLE4[name]
            out |= {"paper_params_m": p_m, "paper_gflops": p_g,
                    "gmacs_vs_paper_pct": round(100 * (cost.gmacs / p_g - 1), 1),
                    "gflops_vs_paper_pct": round(100 * (cost.gflops / p_g - 1), 1)}
    if device.type == "cpu":
        prof = profile_forward(model, inputs, rows=profile_rows)
        out["peak_mem_mb"] = prof["peak_mem_mb"]
        if profile_rows:
            out["top_ops"], out["scan_share"] = prof["top_ops"], prof["scan_share"]
    else:
        with torch.inference_mode():
            model(**inputs)  # CUDA context, cuDNN/cuBLAS handles and kernels before the peak is read
        out |= peak_forward_memory(model, inputs)
    return model, inputs, out


def measure_variant(name: str, *, assets: Any, frames: int = 16, batch: int = 1, repeats: int = 3,
                    warmup: int = 0, profile_rows: int = 8, device: torch.device | str = "cpu",
                    count: bool = True) -> dict[str, Any]:
    """Size, cost (one clip of ``frames``), latency, clips/s and peak memory of the full ``name`` model.

    The untimed runs before the timing (RSS, cost count, profile) warm the model up; ``warmup`` adds more."""
    device = torch.device(device)
    model, inputs, out = _describe(name, assets=assets, frames=frames, batch=batch, profile_rows=profile_rows,
                                   device=device, count=count)
    return out | time_forward(model, inputs, repeats=repeats, warmup=warmup).as_dict()


def _time_in_turn(calls: Mapping[Any, Callable[[], Any]], *, repeats: int, warmup: int = 0,
                  devices: Mapping[Any, torch.device] | None = None,
                  batches: Mapping[Any, int] | None = None) -> dict[Any, Timing]:
    """Time several ``fn()`` in turn (round robin: a, b, c, a, b, c, ...) after ``warmup`` untimed rounds, so
    that a change of the machine's load hits them all alike (CUDA synchronised per ``devices``)."""
    devices = devices or {}
    cpu_dev = torch.device("cpu")
    wall: dict[Any, list[float]] = {k: [] for k in calls}
    cpu: dict[Any, list[float]] = {k: [] for k in calls}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    for _ in range(max(1, repeats)):
        for key, fn in calls.items():
            dev = devices.get(key, cpu_dev)
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(dev)
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    return {k: Timing(wall_s=wall[k], cpu_s=cpu[k], batch=(batches or {}).get(k, 1)) for k in calls}


def time_models(runs: Mapping[Any, tuple[nn.Module, Mapping[str, torch.Tensor]]], *, repeats: int,
                warmup: int = 0) -> dict[Any, Timing]:
    """Inference timing of several ``model(**inputs)`` in turn (round robin: a, b, c, a, b, c, ...), so that a
    change of the machine's load hits them all alike; runs: {key: (model, inputs (B, T, ...))}."""
    calls = {}
    for key, (model, inputs) in runs.items():
        model.eval()
        calls[key] = functools.partial(model, **inputs)
    first = {key: next(iter(inputs.values())) for key, (_, inputs) in runs.items()}
    with torch.inference_mode():
        return _time_in_turn(calls, repeats=repeats, warmup=warmup,
                             devices={k: x.device for k, x in first.items()},
                             batches={k: int(x.shape[0]) for k, x in first.items()})


def measure_variants(names: Sequence[str], *, assets: Any, frames: int = 16, batch: int = 1, repeats: int = 3,
                     warmup: int = 0, profile_rows: int = 8, device: torch.device | str = "cpu", count: bool = True,
                     log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`measure_variant` of every name, with the timed runs interleaved across the models."""
    device = torch.device(device)
    described = {}
    for name in names:
        t0 = time.perf_counter()
        described[name] = _describe(name, assets=assets, frames=frames, batch=batch, profile_rows=profile_rows,
                                    device=device, count=count)
        if log:
            log(f"{name}: size, cost, memory ({time.perf_counter() - t0:.1f} s)")
    timings = time_models({n: (m, x) for n, (m, x, _) in described.items()}, repeats=repeats, warmup=warmup)
    return {n: out | timings[n].as_dict() for n, (_, _, out) in described.items()}


def measure_scaling(names: Sequence[str], frames: Sequence[int], *, scope: str = "lifter", assets: Any = None,
                    repeats: int = 2, warmup: int = 0, batch: int = 1, device: torch.device | str = "cpu",
                    profile_frames: int = 0, profile_rows: int = 8) -> dict[str, dict[str, dict[str, Any]]]:
    """{name: {str(T): timing dict}}: inference speed at every T of the lifter (``scope='lifter'``) or the full
    model, every (model, T) timed in turn; with ``profile_frames`` in ``frames`` (CPU), that T's entry also
    gets ``top_ops`` and ``scan_share``."""
    device = torch.device(device)
    models = {name: _build(name, assets=assets, lift_only=scope == "lifter", max_frames=max(frames)).to(device)
              for name in names}
    runs = {(name, t): (model, _clip_for(model, frames=t, batch=batch, device=device))
            for name, model in models.items() for t in frames}
    timings = time_models(runs, repeats=repeats, warmup=warmup)
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    for (name, t), timing in timings.items():
        out[name][str(t)] = timing.as_dict()
        if t == profile_frames and device.type == "cpu" and profile_rows:
            prof = profile_forward(*runs[(name, t)], rows=profile_rows)
            out[name][str(t)] |= {"top_ops": prof["top_ops"], "scan_share": prof["scan_share"]}
    return out


def scan_inputs(*, batch: int, dim: int, length: int, dstate: int, seed: int = 0,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Inputs of one Mamba block's scan: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L); D, delta_bias (dim,)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    out = {"u": torch.randn(batch, dim, length, generator=g),
           "delta": torch.randn(batch, dim, length, generator=g) * 0.5,
           "A": -torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1),
           "B": torch.randn(batch, dstate, length, generator=g),
           "C": torch.randn(batch, dstate, length, generator=g),
           "D": torch.ones(dim),
           "z": torch.randn(batch, dim, length, generator=g),
           "delta_bias": dt + torch.log(-torch.expm1(-dt))}
    return {k: v.to(device) for k, v in out.items()}


def _time_scan_fwd_bwd(fn: Callable[..., torch.Tensor], inputs: Mapping[str, torch.Tensor], *, repeats: int,
                       warmup: int) -> Timing:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}

    def step() -> None:
        for v in leaves.values():
            v.grad = None
        out = fn(**leaves, delta_softplus=True)
        out.backward(torch.ones_like(out))

    return time_call(step, repeats=repeats, warmup=warmup, device=inputs["u"].device)


def scan_speedup(*, batch: int = 64, dim: int = 256, length: int = 243, dstate: int = 16, repeats: int = 3,
                 ref_batch: int | None = None, ref_repeats: int = 1, device: torch.device | str = "cpu",
                 fast: Callable[..., torch.Tensor] | None = None, fast_name: str = "selective_scan") -> dict[str, Any]:
    """Forward+backward ms of ``fast`` (default ``selective_scan``) and ``selective_scan_ref`` at (batch, dim, length,
    dstate); the reference runs on the first ``ref_batch`` sequences and ``speedup`` compares equal batches."""
    from hmrmamba.ssm.scan import selective_scan, selective_scan_ref

    fast = fast or selective_scan
    ref_batch = batch if ref_batch is None else ref_batch
    inputs = scan_inputs(batch=batch, dim=dim, length=length, dstate=dstate, device=device)
    full = _time_scan_fwd_bwd(fast, inputs, repeats=repeats, warmup=1)
    per_seq = {"u", "delta", "z", "B", "C"}
    small = {k: (v[:ref_batch] if k in per_seq else v) for k, v in inputs.items()}
    fast_small = full if ref_batch == batch else _time_scan_fwd_bwd(fast, small, repeats=repeats, warmup=1)
    ref = _time_scan_fwd_bwd(selective_scan_ref, small, repeats=ref_repeats, warmup=0)
    return {"fast": fast_name, "batch": batch, "dim": dim, "length": length, "dstate": dstate,
            "device": str(torch.device(device)), "fast_fwd_bwd_ms": round(full.latency_ms, 2),
            "fast_runs_ms": full.as_dict()["runs_ms"], "ref_batch": ref_batch,
            "fast_fwd_bwd_ms_at_ref_batch": round(fast_small.latency_ms, 2),
            "ref_fwd_bwd_ms": round(ref.latency_ms, 2), "ref_runs_ms": ref.as_dict()["runs_ms"],
            "speedup": round(ref.median_s / fast_small.median_s, 2)}


def _macs_at(name: str, frames: int, *, assets: Any, lift_only: bool = False) -> int:
    """MACs of one clip of ``frames`` frames of the full model (or its lifter), counted on the meta device (no
    memory, no arithmetic) unless the model holds sparse matrices, which the meta device cannot multiply."""
    from hmrmamba.efficiency.flops import count_cost, model_clip_inputs

    with torch.device("meta"):
        model = _build(name, assets=assets, lift_only=lift_only, max_frames=frames)
    device = "meta"
    if any(b.layout != torch.strided for b in model.buffers()):
        model, device = _build(name, assets=assets, lift_only=lift_only, max_frames=frames), "cpu"
    inputs = model_clip_inputs(model, frames=frames, device=device)
    return count_cost(model, inputs).macs


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den in (None, 0) else round(num / den, 3)


# ----------------------------------------------------------------------------------------------
# rate: multiply-adds per second, against the machine's matmul


def gmacs_per_s(macs: int | float | None, seconds: float | None, batch: int = 1) -> float | None:
    """Billions of multiply-adds per second of a call doing ``batch`` clips of ``macs`` each in ``seconds``."""
    if macs is None or not seconds or seconds <= 0:
        return None
    return round(macs * batch / seconds / 1e9, 4)


def _row_rate(row: Mapping[str, Any], macs: int | None = None) -> float | None:
    """GMAC/s of a timing row: its ``macs`` (or the given ones) x ``batch`` / its median ``latency_ms``."""
    macs = row.get("macs") if macs is None else macs
    latency = row.get("latency_ms")
    return gmacs_per_s(macs, None if latency is None else latency / 1e3, int(row.get("batch", 1) or 1))


def pct_of_matmul_peak(rate_gmacs: float | None, matmul_gflops: float | None) -> float | None:
    """100 x 2 x GMAC/s / matmul GFLOP/s: the model's FLOP rate (2 per multiply-add) as a share of the matmul's."""
    if rate_gmacs is None or not matmul_gflops:
        return None
    return round(100 * 2 * rate_gmacs / matmul_gflops, 2)


def matmul_flops(n: int) -> int:
    """FLOPs of an n x n by n x n matrix product: n^2 outputs of n multiply-adds, 2 FLOPs each = 2 n^3."""
    return 2 * n ** 3


def measure_matmul(n: int = MATMUL_N, *, repeats: int = MATMUL_REPEATS, warmup: int = 1) -> dict[str, Any]:
    """The machine's reference rate: best GFLOP/s of a square float32 ``torch.mm`` (n x n) on torch's threads."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    with torch.inference_mode():
        timing = time_call(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=warmup)
    flops = matmul_flops(n)
    best = min(timing.wall_s)
    return {"n": n, "dtype": "float32", "threads": torch.get_num_threads(), "flops": flops,
            "gflops_per_s": round(flops / best / 1e9, 2),
            "median_gflops_per_s": round(flops / timing.median_s / 1e9, 2),
            "runs_ms": timing.as_dict()["runs_ms"]}


def scaling_macs(names: Sequence[str], frames: Sequence[int], *, scope: str = "lifter",
                 assets: Any = None) -> dict[str, dict[str, int]]:
    """{name: {str(T): MACs of one clip}} of the lifter (``scope='lifter'``) or the full model at every T."""
    return {name: {str(t): _macs_at(name, t, assets=assets, lift_only=scope == "lifter") for t in frames}
            for name in names}


def _add_rates(rows: Mapping[str, dict[str, Any]], matmul_gflops: float | None) -> None:
    """Write ``gmacs_per_s`` and ``pct_of_matmul_peak`` into every row that has ``macs`` and a latency."""
    for row in rows.values():
        rate = _row_rate(row)
        if rate is not None:
            row["gmacs_per_s"] = rate
            row["pct_of_matmul_peak"] = pct_of_matmul_peak(rate, matmul_gflops)


# ----------------------------------------------------------------------------------------------
# online step vs an offline window


def measure_online_step(*, assets: Any, repeats: int = 3, warmup: int = 1, steps: int = ONLINE_STEPS,
                        pair: tuple[str, str, int] = ONLINE_PAIR) -> dict[str, Any]:
    """Median ms of one frame of the causal variant stepped with its state (``steps`` per timed run, from the
    initial state) and of one forward of the offline variant on a window; timed in turn, batch 1."""
    online_name, window_name, window = pair
    online = _build(online_name, assets=assets, max_frames=max(window, steps))
    offline = _build(window_name, assets=assets, max_frames=window)
    clip = _clip_for(offline, frames=window, batch=1)
    frames = _clip_for(online, frames=steps, batch=1)
    per_frame = [{k: v[:, i:i + 1] for k, v in frames.items()} for i in range(steps)]

    def stream() -> None:
        state = online.init_state(1)
        for x in per_frame:
            _, state = online.step(x["kp2d"], x.get("conf"), x.get("feats"), state)

    with torch.inference_mode():
        timings = _time_in_turn({"step": stream, "window": functools.partial(offline, **clip)},
                                repeats=repeats, warmup=warmup)
    step_ms = timings["step"].latency_ms / steps
    window_ms = timings["window"].latency_ms
    step_best, window_best = min(timings["step"].wall_s) * 1e3 / steps, min(timings["window"].wall_s) * 1e3
    return {"online": online_name, "offline": window_name, "window": window, "steps": steps,
            "step_ms": round(step_ms, 3), "window_ms": round(window_ms, 3),
            "step_runs_ms": timings["step"].as_dict()["runs_ms"],
            "window_runs_ms": timings["window"].as_dict()["runs_ms"],
            "ratio": _ratio(step_ms, window_ms), "step_best_ms": round(step_best, 3),
            "window_best_ms": round(window_best, 3), "ratio_best": _ratio(step_best, window_best)}


def measure_efficiency(settings: EfficiencySettings, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every Table 4 measurement of ``settings`` in one process (see the module docstring); JSON-ready."""
    from hmrmamba.models import random_mesh_assets

    say = log or (lambda msg: None)
    s = settings.effective()
    from hmrmamba.ssm.backend import cpu_scan_status

    metrics: dict[str, Any] = {"machine": machine_info(), "settings": asdict(s),
                               "methods": {"timing": TIMING_METHOD, "memory": MEMORY_METHOD, "cost": COST_METHOD,
                                           "rate": RATE_METHOD, "online": ONLINE_METHOD}}
    metrics["cpu_scan"] = cpu_scan_status()
    matmul_repeats = 2 if s.quick else MATMUL_REPEATS
    first_mm = measure_matmul(repeats=matmul_repeats)
    say(f"cpu scan: {metrics['cpu_scan']}; matmul {first_mm['n']}^2 float32: {first_mm['gflops_per_s']} GFLOP/s")
    assets = random_mesh_assets()
    metrics["variants"] = measure_variants(s.variants, assets=assets, frames=s.frames, batch=s.batch,
                                           repeats=s.repeats, warmup=s.warmup, profile_rows=s.profile_rows, log=say)
    say("per-variant timing: " + ", ".join(f"{n} {v['latency_ms']:.0f} ms" for n, v in metrics["variants"].items()))
    metrics["convention"] = _convention(metrics["variants"])

    frames = sorted(set(s.scaling_frames) | set(s.linear_frames if s.linear_variant in s.scaling_variants else ()))
    t0 = time.perf_counter()
    timed = measure_scaling(s.scaling_variants, frames, scope=s.scaling_scope, assets=assets,
                            repeats=s.scaling_repeats, warmup=s.scaling_warmup,
                            profile_frames=s.scaling_profile_frames, profile_rows=s.profile_rows)
    say(f"scaling over T={frames}: {time.perf_counter() - t0:.1f} s")
    _add_scaling_macs(timed, s, assets=assets)
    metrics["scaling"] = _scaling_summary(timed, s)
    metrics["linear"] = _linear_summary(timed, s, assets=assets)
    online_name, window_name, window = ONLINE_PAIR
    metrics["online"] = measure_online_step(assets=assets, repeats=1 if s.quick else max(s.repeats, ONLINE_REPEATS),
                                            warmup=0 if s.quick else 2)
    say(f"online: {online_name} step {metrics['online']['step_ms']:.2f} ms vs {window_name} window of {window} "
        f"{metrics['online']['window_ms']:.1f} ms")
    t0 = time.perf_counter()
    metrics["scan"] = scan_speedup(batch=s.scan_batch, dim=s.scan_dim, length=s.scan_length, dstate=s.scan_dstate,
                                   repeats=s.scan_repeats, ref_batch=s.scan_ref_batch, ref_repeats=s.scan_ref_repeats)
    say(f"scan: {metrics['scan']['speedup']}x ({time.perf_counter() - t0:.1f} s)")
    if s.cuda and torch.cuda.is_available():
        metrics["cuda"] = measure_cuda(s, assets=assets)
    if hasattr(os, "getloadavg"):
        metrics["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    metrics["matmul"] = _matmul_summary(first_mm, measure_matmul(repeats=matmul_repeats))
    peak = metrics["matmul"]["gflops_per_s"]
    _add_rates(metrics["variants"], peak)
    for per in metrics["scaling"]["variants"].values():
        _add_rates(per, peak)
    metrics["scaling"] |= _rate_ratios(metrics["scaling"])
    metrics["targets"] = check_targets(metrics)
    return metrics


def _matmul_summary(start: Mapping[str, Any], end: Mapping[str, Any]) -> dict[str, Any]:
    """The matmul rate measured at the start and at the end of the run; the better one is the reference."""
    best = max(start["gflops_per_s"], end["gflops_per_s"])
    return {**end, "gflops_per_s": best, "start_gflops_per_s": start["gflops_per_s"],
            "end_gflops_per_s": end["gflops_per_s"], "runs_ms": start["runs_ms"] + end["runs_ms"]}


def _add_scaling_macs(timed: Mapping[str, dict[str, dict[str, Any]]], s: EfficiencySettings, *,
                      assets: Any) -> None:
    """Write ``macs`` and ``gmacs`` of one clip (lifter or full model, as timed) into every scaling row."""
    frames = sorted({int(t) for per in timed.values() for t in per})
    macs = scaling_macs(list(timed), frames, scope=s.scaling_scope, assets=assets)
    for name, per in timed.items():
        for t, row in per.items():
            row |= {"macs": macs[name][t], "gmacs": round(macs[name][t] / 1e9, 4)}


def _rate_ratios(scaling: Mapping[str, Any]) -> dict[str, Any]:
    """{"ratio_gmacs_per_s_hmrmamba_s_over_pmce": {str(T): ratio}} where both were timed."""
    per = scaling.get("variants", {})
    a, b = per.get("hmrmamba-s"), per.get("pmce")
    if a is None or b is None:
        return {}
    return {"ratio_gmacs_per_s_hmrmamba_s_over_pmce": {
        t: _ratio(a[t].get("gmacs_per_s"), b[t].get("gmacs_per_s")) for t in a if t in b}}


def _convention(variants: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Which of MACs / FLOPs reproduces the paper's "GFlops" (mean |relative error| over the paper rows)."""
    rows = [v for v in variants.values() if "paper_gflops" in v]
    out: dict[str, Any] = {"gmacs": "multiply-adds (fvcore/thop)", "gflops": "FLOPs = 2 x MACs (FlopCounterMode)"}
    if rows:
        err_m = statistics.mean(abs(v["gmacs_vs_paper_pct"]) for v in rows)
        err_f = statistics.mean(abs(v["gflops_vs_paper_pct"]) for v in rows)
        out |= {"mean_abs_err_pct_gmacs": round(err_m, 1), "mean_abs_err_pct_gflops": round(err_f, 1),
                "paper_gflops_are": "gmacs" if err_m < err_f else "gflops"}
    return out


def _scaling_summary(timed: Mapping[str, Mapping[str, Any]], s: EfficiencySettings) -> dict[str, Any]:
    scope_note = ("lifter only (stage 1: the part whose temporal model differs, Mamba vs transformer); the full "
                  "paper-size models are too slow at long T on a 2-core CPU for the stage's time budget"
                  if s.scaling_scope == "lifter" else "full model")
    out: dict[str, Any] = {"scope": s.scaling_scope, "note": scope_note, "frames": list(s.scaling_frames),
                           "variants": {n: {t: v for t, v in per.items() if int(t) in s.scaling_frames}
                                        for n, per in timed.items()}}
    a, b = "hmrmamba-s", "pmce"
    if a in timed and b in timed:
        out["ratio_hmrmamba_s_over_pmce"] = {str(t): _ratio(timed[a][str(t)]["clips_per_s"],
                                                           timed[b][str(t)]["clips_per_s"])
                                             for t in s.scaling_frames}
    return out


def _linear_summary(timed: Mapping[str, Mapping[str, Any]], s: EfficiencySettings, *, assets: Any) -> dict[str, Any]:
    t1, t2 = s.linear_frames
    m1, m2 = _macs_at(s.linear_variant, t1, assets=assets), _macs_at(s.linear_variant, t2, assets=assets)
    out: dict[str, Any] = {"variant": s.linear_variant, "frames": [t1, t2], "gmacs": [round(m1 / 1e9, 3),
                                                                                     round(m2 / 1e9, 3)],
                           "macs_ratio": _ratio(m2, m1), "macs_scope": "full model"}
    per = timed.get(s.linear_variant)
    if per is not None:
        l1, l2 = per[str(t1)]["latency_ms"], per[str(t2)]["latency_ms"]
        out |= {"latency_ms": [l1, l2], "time_ratio": _ratio(l2, l1), "time_scope": s.scaling_scope}
    return out


def measure_cuda(s: EfficiencySettings, *, assets: Any) -> dict[str, Any]:
    """The same measurements on CUDA (``mamba_ssm`` kernels when they import): per variant, scaling, scan."""
    from hmrmamba.ssm.backend import mamba_ssm_available, scan_with_backend

    dev = torch.device("cuda")
    backend = "mamba_ssm" if mamba_ssm_available() else "torch"
    out: dict[str, Any] = {"device_name": torch.cuda.get_device_name(dev), "backend": backend,
                           "torch_cuda": torch.version.cuda, "variants": {}}
    repeats = max(s.repeats, 10)
    for name in s.variants:
        out["variants"][name] = measure_variant(name, assets=assets, frames=s.frames, batch=s.batch,
                                                repeats=repeats, warmup=3, profile_rows=0, device=dev, count=False)
    out["scaling"] = measure_scaling(s.scaling_variants, s.scaling_frames, scope="full", assets=assets,
                                     repeats=repeats, warmup=2, device=dev)
    fast_name = "mamba_ssm selective_scan_fn" if backend == "mamba_ssm" else "selective_scan"

    def fast(**kw: Any) -> torch.Tensor:
        return scan_with_backend(**kw, backend=backend)

    out["scan"] = scan_speedup(batch=s.scan_batch, dim=s.scan_dim, length=s.scan_length, dstate=s.scan_dstate,
                               repeats=repeats, ref_batch=s.scan_batch, ref_repeats=3, device=dev, fast=fast,
                               fast_name=fast_name)
    out["peak_note"] = "torch.cuda.max_memory_allocated above the level before the forward"
    return out


# ----------------------------------------------------------------------------------------------
# targets and the table


def _target_values(m: Mapping[str, Any]) -> dict[str, tuple[str, float | None]]:
    """{key: (what was measured, value)} for the keys of ``TARGETS``."""
    var, scan, lin = m.get("variants", {}), m.get("scan", {}), m.get("linear", {})
    sc, on = m.get("scaling", {}), m.get("online", {})
    t16 = None
    if "hmrmamba-s" in var and "pmce" in var:
        t16 = _ratio(var["hmrmamba-s"]["clips_per_s"], var["pmce"]["clips_per_s"])
    frames = var.get("hmrmamba-s", {}).get("frames", "?")
    t1, t2 = lin.get("frames", ("?", "?"))
    lv = lin.get("variant", "?")
    return {
        "scan_speedup": ((f"selective_scan / selective_scan_ref, fwd+bwd, (B={scan.get('ref_batch', '?')}, "
                         f"D={scan.get('dim', '?')}, L={scan.get('length', '?')}, N={scan.get('dstate', '?')})"),
                         scan.get("speedup")),
        "s_vs_pmce_t16": (f"hmrmamba-s / pmce clips/s, T={frames}, full model, CPU", t16),
        "s_vs_pmce_t243": (f"hmrmamba-s / pmce clips/s, T=243, {sc.get('scope', '?')}, CPU",
                           sc.get("ratio_hmrmamba_s_over_pmce", {}).get("243")),
        "linear_time_ratio": (f"{lv} time T={t2} / T={t1} ({lin.get('time_scope', '?')})", lin.get("time_ratio")),
        "linear_macs_ratio": (f"{lv} MACs T={t2} / T={t1} ({lin.get('macs_scope', '?')})", lin.get("macs_ratio")),
        "s_vs_pmce_gmacs_per_s_t243": (f"hmrmamba-s GMAC/s / pmce GMAC/s, T=243, {sc.get('scope', '?')}, CPU",
                                       sc.get("ratio_gmacs_per_s_hmrmamba_s_over_pmce", {}).get("243")),
        "online_step_vs_window": ((f"{on.get('online', 'tiny-online')} step / one {on.get('window', 16)}-frame "
                                   f"{on.get('offline', 'tiny')} window, CPU"), on.get("ratio")),
    }


def check_targets(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against the measurements: value, threshold, met, and the factor missing when not met."""
    values = _target_values(metrics)
    rows = []
    for key, threshold, kind in TARGETS:
        what, v = values[key]
        row: dict[str, Any] = {"key": key, "target": f"{'>=' if kind == 'min' else '<='} {threshold:g}",
                               "what": what, "value": v, "met": None}
        if v is not None:
            row["met"] = bool(v >= threshold) if kind == "min" else bool(v <= threshold)
            if not row["met"] and v > 0:
                row["missed_by"] = round(threshold / v, 2) if kind == "min" else round(v / threshold, 2)
        rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _in_settings_order(metrics: Mapping[str, Any], key: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` in the order of ``settings[key]`` (JSON files have their keys sorted), the rest after."""
    order = [n for n in metrics.get("settings", {}).get(key, ()) if n in d]
    return {n: d[n] for n in order + [n for n in d if n not in order]}


def _profile_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Where the time goes: share inside the selective scan and the top ops of every profiled run."""
    var = _in_settings_order(metrics, "variants", metrics.get("variants", {}))
    runs = [(f"{n}, full, T={v.get('frames')}", v) for n, v in var.items()]
    sc = metrics.get("scaling", {})
    scaled = _in_settings_order(metrics, "scaling_variants", sc.get("variants", {}))
    runs += [(f"{n}, {sc.get('scope')}, T={t}", v) for n, per in scaled.items()
             for t, v in sorted(per.items(), key=lambda kv: int(kv[0]))]
    runs = [(label, v) for label, v in runs if v.get("top_ops")]
    if not runs:
        return []
    lines = ["", ("Where the time goes (one profiled forward, `torch.profiler` self CPU time; the profiler slows "
                 "small ops more than large ones):"), "",
             "| run | in selective scan | top ops (share of self time) |", "|---|---:|---|"]
    for label, v in runs:
        ops = ", ".join(f"{o['op'].removeprefix('aten::')} {100 * o['share']:.0f} %" for o in v["top_ops"][:4])
        lines.append(f"| {label} | {100 * v.get('scan_share', 0.0):.0f} % | {ops} |")
    return lines


def _rate_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Which CPU scan ran and the machine's matmul rate (the reference of ``% of matmul peak``)."""
    lines = []
    if metrics.get("cpu_scan"):
        lines.append(f"CPU selective scan: {metrics['cpu_scan']}.")
    mm = metrics.get("matmul")
    if mm:
        lines.append(f"Matmul reference: square float32 `torch.mm` {mm['n']}x{mm['n']} ({mm['flops'] / 1e9:.2f} "
                     f"GFLOP = 2n^3), {mm['threads']} threads, best run: "
                     f"**{_fmt(mm['gflops_per_s'], 1)} GFLOP/s** (start {_fmt(mm.get('start_gflops_per_s'), 1)}, "
                     f"end {_fmt(mm.get('end_gflops_per_s'), 1)}). "
                     "% of matmul peak = 100 x 2 x GMAC/s / matmul GFLOP/s; GMAC/s = MACs of the timed call / "
                     "median time.")
    return lines + [""] if lines else []


def _scaling_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Clips/s and GMAC/s over T of the scaling variants, with the hmrmamba-s / pmce ratios."""
    sc = metrics.get("scaling", {})
    if not sc.get("variants"):
        return []
    names = list(_in_settings_order(metrics, "scaling_variants", sc["variants"]))
    lines = ["", f"Clips/s and GMAC/s over T ({sc.get('scope')}: {sc.get('note', '')}), batch 1:", "",
             ("| T | " + " | ".join(f"{n} clips/s" for n in names) + " | "
              + " | ".join(f"{n} GMAC/s" for n in names)
              + " | hmrmamba-s / pmce clips/s | hmrmamba-s / pmce GMAC/s |"),
             "|---:|" + "---:|" * (2 * len(names) + 2)]
    ratios = sc.get("ratio_hmrmamba_s_over_pmce", {})
    rate_ratios = sc.get("ratio_gmacs_per_s_hmrmamba_s_over_pmce", {})
    for t in sc.get("frames", []):
        rows = [sc["variants"][n].get(str(t), {}) for n in names]
        cells = [_fmt(r.get("clips_per_s"), 3) for r in rows] + [_fmt(r.get("gmacs_per_s")) for r in rows]
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {_fmt(ratios.get(str(t)))} "
                     f"| {_fmt(rate_ratios.get(str(t)))} |")
    return lines


def efficiency_table(metrics: Mapping[str, Any]) -> str:
    """Markdown of ``metrics/efficiency.json``: machine, the per-variant table, scaling in T, scan, targets."""
    mach = metrics.get("machine", {})
    lines = [(f"Machine: {mach.get('cpu', '?')}, {mach.get('logical_cpus', '?')} logical CPUs, "
             f"{mach.get('threads', '?')} torch threads, torch {mach.get('torch', '?')}; load average "
             f"{mach.get('loadavg_start', '?')} at the start, {mach.get('loadavg_end', '?')} at the end."), ""]
    lines += _rate_lines(metrics)
    var = _in_settings_order(metrics, "variants", metrics.get("variants", {}))
    first = next(iter(var.values()), {})
    lines += [(f"Per clip of T={first.get('frames', '?')} frames, batch {first.get('batch', '?')}, CPU, "
              f"`torch.inference_mode`; latency = median of {len(first.get('runs_ms', []))} runs."), "",
              ("| model | #P (M) | GMACs | GFLOPs (2/MAC) | scan GMACs | paper #P / GFlops | latency (ms) "
              "| CPU time (ms) | clips/s | GMAC/s | % of matmul peak | peak mem (MB) | RSS rise (MB) |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in var.items():
        paper = f"{v['paper_params_m']:.2f} / {v['paper_gflops']:.2f}" if "paper_gflops" in v else "-"
        lines.append(f"| {name} | {_fmt(v.get('params_m'))} | {_fmt(v.get('gmacs'))} | {_fmt(v.get('gflops'))} "
                     f"| {_fmt(v.get('scan_gmacs'), 3)} | {paper} | {_fmt(v.get('latency_ms'), 1)} "
                     f"| {_fmt(v.get('cpu_ms'), 1)} | {_fmt(v.get('clips_per_s'))} | {_fmt(v.get('gmacs_per_s'))} "
                     f"| {_fmt(v.get('pct_of_matmul_peak'), 1)} | {_fmt(v.get('peak_mem_mb'), 1)} "
                     f"| {_fmt(v.get('rss_delta_mb'), 1)} |")
    conv = metrics.get("convention", {})
    if "paper_gflops_are" in conv:
        lines += ["", (f"The paper's \"GFlops\" match **{conv['paper_gflops_are']}** (mean |error| "
                      f"{conv['mean_abs_err_pct_gmacs']} % for GMACs vs {conv['mean_abs_err_pct_gflops']} % "
                      f"for GFLOPs over the paper's rows).")]
    lines += _scaling_lines(metrics)
    lin = metrics.get("linear", {})
    if lin:
        t1, t2 = lin["frames"]
        lines += ["", (f"Linear cost, {lin['variant']}: MACs(T={t2}) / MACs(T={t1}) = {_fmt(lin.get('macs_ratio'), 3)} "
                      f"({lin.get('macs_scope')}); time ratio = {_fmt(lin.get('time_ratio'), 3)} "
                      f"({lin.get('time_scope', '-')}, {_fmt((lin.get('latency_ms') or [None])[-1], 1)} ms vs "
                      f"{_fmt((lin.get('latency_ms') or [None])[0], 1)} ms).")]
    scan = metrics.get("scan", {})
    if scan:
        lines += ["", (f"Selective scan fwd+bwd at (B={scan['batch']}, D={scan['dim']}, L={scan['length']}, "
                      f"N={scan['dstate']}): {scan['fast']} {_fmt(scan['fast_fwd_bwd_ms'], 1)} ms; at "
                      f"B={scan['ref_batch']}: {_fmt(scan['fast_fwd_bwd_ms_at_ref_batch'], 1)} ms vs "
                      f"selective_scan_ref {_fmt(scan['ref_fwd_bwd_ms'], 1)} ms = **{_fmt(scan['speedup'], 1)}x**.")]
    cuda = metrics.get("cuda")
    if cuda:
        lines += ["", f"CUDA ({cuda['device_name']}, scan backend {cuda['backend']}):", "",
                  "| model | latency (ms) | clips/s | peak mem (MB) |", "|---|---:|---:|---:|"]
        for name, v in cuda.get("variants", {}).items():
            lines.append(f"| {name} | {_fmt(v.get('latency_ms'), 2)} | {_fmt(v.get('clips_per_s'), 1)} "
                         f"| {_fmt(v.get('peak_mem_mb'), 1)} |")
        cs = cuda.get("scan", {})
        if cs:
            lines += ["", (f"CUDA scan fwd+bwd: {cs['fast']} {_fmt(cs['fast_fwd_bwd_ms'], 2)} ms vs ref "
                          f"{_fmt(cs['ref_fwd_bwd_ms'], 2)} ms = {_fmt(cs['speedup'], 1)}x.")]
    on = metrics.get("online")
    if on:
        lines += ["", (f"Online: {on['online']} one step (state carried, median of runs of {on['steps']} steps) "
                      f"{_fmt(on['step_ms'])} ms vs one {on['window']}-frame {on['offline']} window "
                      f"{_fmt(on['window_ms'], 1)} ms = {_fmt(on['ratio'], 3)} (full models, batch 1, CPU; medians "
                      f"of {len(on.get('window_runs_ms', []))} runs in turn; best runs: {_fmt(on.get('step_best_ms'))} "
                      f"vs {_fmt(on.get('window_best_ms'), 1)} ms = {_fmt(on.get('ratio_best'), 3)}).")]
    lines += _profile_lines(metrics)
    targets = metrics.get("targets") or check_targets(metrics)
    lines += ["", "| target | wanted | measured | met |", "|---|---:|---:|---|"]
    for t in targets:
        met = "-" if t["met"] is None else "yes" if t["met"] else f"**no** (off by {t.get('missed_by', '?')}x)"
        lines.append(f"| {t['what']} | {t['target']} | {_fmt(t['value'])} | {met} |")
    return "\n".join(lines)
