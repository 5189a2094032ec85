"""The efficiency stage (Table 4): fields, parameter counts, cost counting, memory method, table, targets.

Tiny variants and short clips only; no assertion depends on how fast anything ran.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hmrmamba.efficiency.benchmark import (
    EfficiencySettings,
    check_targets,
    efficiency_table,
    gmacs_per_s,
    matmul_flops,
    measure_matmul,
    pct_of_matmul_peak,
    profile_forward,
    scan_macs_of,
    settings_from_params,
)
from hmrmamba.errors import InputError
from hmrmamba.efficiency.flops import count_cost, model_clip_inputs, scan_macs
from hmrmamba.ssm.mamba import Mamba

VARIANT_FIELDS = ("params", "params_m", "macs", "gmacs", "flops", "gflops", "scan_gmacs", "weights_mb",
                  "latency_ms", "clips_per_s", "cpu_ms", "runs_ms", "peak_mem_mb", "rss_delta_mb", "top_ops",
                  "frames", "batch", "device")

TINY_SECTION = {
    "variants": ["tiny", "mlp"], "frames": 8, "repeats": 1, "warmup": 0, "profile_rows": 4, "cuda": False,
    "scaling": {"variants": ["tiny", "mlp"], "frames": [4, 8], "scope": "lifter", "repeats": 1,
                "profile_frames": 8},
    "linear": {"variant": "tiny", "frames": [8, 16]},
    "scan": {"batch": 4, "dim": 8, "length": 12, "dstate": 4, "repeats": 1, "ref_batch": 2},
}


@pytest.fixture(scope="module")
def stage_metrics(tmp_path_factory) -> tuple[dict, dict]:
    """The stage run once on tiny settings: (returned metrics, metrics/efficiency.json re-read)."""
    from hmrmamba.stages import efficiency
    from hmrmamba.stages.common import execute

    root = tmp_path_factory.mktemp("eff")
    metrics = execute(efficiency.STAGE, efficiency.run, root=root, params={"efficiency": TINY_SECTION},
                      log_to_mlflow=False)
    written = json.loads((root / "metrics" / "efficiency.json").read_text())
    return metrics, written


def test_json_has_every_field_per_variant(stage_metrics):
    _, written = stage_metrics
    assert set(written["variants"]) == {"tiny", "mlp"}
    for name, v in written["variants"].items():
        missing = [k for k in VARIANT_FIELDS if k not in v]
        assert not missing, f"{name} lacks {missing}"
        assert v["frames"] == 8 and v["batch"] == 1 and v["device"] == "cpu"
        assert len(v["runs_ms"]) == 1 and v["latency_ms"] > 0 and v["clips_per_s"] > 0
        assert v["peak_mem_mb"] is not None and v["peak_mem_mb"] > 0
        assert 0 < len(v["top_ops"]) <= 4 and {"op", "self_ms", "calls", "share"} <= set(v["top_ops"][0])
    for key in ("machine", "settings", "methods", "convention", "scaling", "linear", "scan", "targets", "seconds"):
        assert key in written, key
    assert written["machine"]["threads"] == torch.get_num_threads()
    assert written["machine"]["cpu"]
    assert set(written["scaling"]["variants"]) == {"tiny", "mlp"}
    assert set(written["scaling"]["variants"]["tiny"]) == {"4", "8"}
    assert "top_ops" in written["scaling"]["variants"]["tiny"]["8"]
    assert "top_ops" not in written["scaling"]["variants"]["tiny"]["4"]
    # time inside the selective scan: some for the Mamba lifter, none without Mamba
    assert 0 < written["variants"]["tiny"]["scan_share"] < 1 and written["variants"]["mlp"]["scan_share"] == 0
    assert written["scan"]["batch"] == 4 and written["scan"]["ref_batch"] == 2 and written["scan"]["speedup"] > 0
    assert "cuda" not in written


def test_params_m_is_the_real_parameter_count(stage_metrics):
    from hmrmamba.models import build, random_mesh_assets

    _, written = stage_metrics
    assets = random_mesh_assets()
    for name in ("tiny", "mlp"):
        model = build(name, assets=assets)
        n = sum(p.numel() for p in model.parameters())
        assert written["variants"][name]["params"] == n
        assert written["variants"][name]["params_m"] == pytest.approx(n / 1e6, abs=1e-4)


def test_macs_positive_and_the_scan_counted(stage_metrics):
    from hmrmamba.efficiency.flops import clip_inputs
    from hmrmamba.models import build, random_mesh_assets

    _, written = stage_metrics
    tiny, mlp = written["variants"]["tiny"], written["variants"]["mlp"]
    assert tiny["gmacs"] > 0 and tiny["flops"] == 2 * tiny["macs"]
    assert tiny["gflops"] == pytest.approx(2 * tiny["gmacs"], rel=1e-3)
    assert tiny["scan_gmacs"] > 0 and tiny["gmacs"] > tiny["scan_gmacs"]
    assert mlp["scan_gmacs"] == 0  # no Mamba in the MLP lifter or the reconstructor
    # same number as counting the model directly
    model = build("tiny", assets=random_mesh_assets())
    inputs = model_clip_inputs(model, frames=8)
    assert "spatial" in inputs  # tiny's GA samples layer3 maps: counted with them
    assert tiny["macs"] == count_cost(model, inputs).macs
    assert tiny["scan_gmacs"] == pytest.approx(scan_macs_of(model, inputs) / 1e9, abs=1e-4)
    # linear check: MACs at T=16 over T=8 of a model without attention over time
    assert written["linear"]["macs_ratio"] == pytest.approx(2.0, abs=0.05)


class _OneMamba(nn.Module):
    def __init__(self):
        super().__init__()
        self.m = Mamba(8, d_state=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


def test_scan_macs_known_answer():
    """A bare Mamba: the hooks give the scan formula; count_cost adds it to the projections and the conv."""
    w = _OneMamba()
    m, b, length = w.m, 2, 5
    di, r, n = m.d_inner, m.dt_rank, m.d_state
    x = {"x": torch.randn(b, length, 8)}
    scan = 9 * b * length * di * n + 2 * b * di * length  # states, plus the D skip and the z gate
    dense = (b * length * 8 * 2 * di + b * di * length * m.d_conv + b * length * di * (r + 2 * n)
             + b * length * r * di + b * length * di * 8)
    assert scan_macs_of(w, x) == scan == scan_macs(b, length, di, n)
    assert count_cost(w, x).macs == dense + scan


def test_peak_memory_of_a_known_allocation():
    class Alloc(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            big = torch.ones(1_000_000)  # 4,000,000 bytes held at once
            return x + big.sum()

    out = profile_forward(Alloc(), {"x": torch.zeros(3)}, rows=2)
    assert out["peak_mem_mb"] == pytest.approx(4_000_000 / 2**20, abs=0.01)
    assert len(out["top_ops"]) == 2


def test_table_renders_every_variant_row(stage_metrics):
    metrics, written = stage_metrics
    for m in (metrics, written):
        table = efficiency_table(m)
        rows = [line for line in table.splitlines() if line.startswith("| ")]
        for name in ("tiny", "mlp"):
            assert any(line.startswith(f"| {name} | ") for line in rows), name
        assert written["machine"]["cpu"] in table
        assert "| tiny, lifter, T=8 |" in table  # the profile section
        assert table.count("| 4 |") == 1 and table.count("| 8 |") == 1  # scaling rows
        assert sum(("| >= " in line or "| <= " in line) for line in rows) == 7  # the targets
    # the order of the settings, not the JSON's sorted keys
    table = efficiency_table(written)
    assert table.index("| tiny |") < table.index("| mlp |")


def test_table_shows_paper_rows():
    metrics = {"variants": {"hmrmamba-s": {"frames": 16, "batch": 1, "params_m": 80.4, "gmacs": 7.88,
                                           "gflops": 15.77, "paper_params_m": 79.63, "paper_gflops": 7.88,
                                           "latency_ms": 100.0, "clips_per_s": 10.0, "runs_ms": [100.0]}}}
    table = efficiency_table(metrics)
    assert "| hmrmamba-s | 80.40 | 7.88 | 15.77 |" in table and "79.63 / 7.88" in table


def test_targets_known_answers():
    metrics = {"variants": {"hmrmamba-s": {"clips_per_s": 2.0, "frames": 16}, "pmce": {"clips_per_s": 4.0}},
               "scaling": {"scope": "lifter", "ratio_hmrmamba_s_over_pmce": {"243": 2.5}},
               "linear": {"variant": "hmrmamba-s", "frames": [243, 486], "time_ratio": 2.75, "macs_ratio": 2.0},
               "scan": {"speedup": 20.0, "length": 243, "dim": 256, "dstate": 16, "ref_batch": 8}}
    rows = {r["key"]: r for r in check_targets(metrics)}
    assert rows["scan_speedup"]["met"] is True and "L=243" in rows["scan_speedup"]["what"]
    assert rows["s_vs_pmce_t16"]["value"] == 0.5 and rows["s_vs_pmce_t16"]["met"] is False
    assert rows["s_vs_pmce_t16"]["missed_by"] == 2.0
    assert rows["s_vs_pmce_t243"]["met"] is True
    assert rows["linear_time_ratio"]["met"] is False and rows["linear_time_ratio"]["missed_by"] == 1.25
    assert rows["linear_macs_ratio"]["met"] is True
    assert check_targets({})[0]["met"] is None  # nothing measured: no verdict


def test_settings_from_params_and_bad_input():
    s = settings_from_params(TINY_SECTION)
    assert s.variants == ("tiny", "mlp") and s.scaling_frames == (4, 8) and s.scan_ref_batch == 2
    assert s.linear_frames == (8, 16) and s.cuda is False
    assert settings_from_params({}) == EfficiencySettings()
    quick = EfficiencySettings(quick=True).effective()
    assert quick.repeats == 1 and max(quick.scaling_frames) == 243 and quick.scan_ref_batch <= 4
    with pytest.raises(InputError, match="efficiency.variants"):
        settings_from_params({"variants": ["tiny", "nope"]})
    with pytest.raises(InputError, match="efficiency"):
        settings_from_params({"repeat": 3})
    with pytest.raises(InputError, match="scan.ref_batch"):
        settings_from_params({"scan": {"batch": 4, "ref_batch": 8}})
    with pytest.raises(InputError, match="scaling.scope"):
        settings_from_params({"scaling": {"scope": "everything"}})
    with pytest.raises(InputError, match="linear.frames"):
        settings_from_params({"linear": {"frames": [243]}})
    with pytest.raises(InputError, match="efficiency.frames"):
        settings_from_params({"frames": 0})


def test_new_rate_fields_in_a_quick_run(stage_metrics):
    """GMAC/s per model and scaling row, the matmul reference, the CPU scan and the online step are written."""
    _, written = stage_metrics
    for name, v in written["variants"].items():
        assert v["gmacs_per_s"] > 0 and v["pct_of_matmul_peak"] > 0, name
        assert v["gmacs_per_s"] == pytest.approx(v["macs"] * v["batch"] / (v["latency_ms"] / 1e3) / 1e9, rel=1e-3)
    for name, per in written["scaling"]["variants"].items():
        for t, row in per.items():
            assert row["macs"] > 0 and row["gmacs_per_s"] > 0 and "pct_of_matmul_peak" in row, (name, t)
    # the lifter's MACs grow with T
    tiny = written["scaling"]["variants"]["tiny"]
    assert tiny["8"]["macs"] > tiny["4"]["macs"]
    mm = written["matmul"]
    assert mm["n"] == 1024 and mm["flops"] == 2 * 1024 ** 3 and mm["gflops_per_s"] > 0
    assert mm["gflops_per_s"] == max(mm["start_gflops_per_s"], mm["end_gflops_per_s"])
    assert written["cpu_scan"].startswith(("fused C", "pytorch"))
    on = written["online"]
    assert on["online"] == "tiny-online" and on["offline"] == "tiny" and on["window"] == 16
    assert on["step_ms"] > 0 and on["window_ms"] > 0 and on["ratio_best"] > 0
    assert on["ratio"] == pytest.approx(on["step_ms"] / on["window_ms"], rel=0.01, abs=1e-3)
    targets = {t["key"]: t for t in written["targets"]}
    assert targets["online_step_vs_window"]["value"] == on["ratio"]
    assert targets["s_vs_pmce_gmacs_per_s_t243"]["value"] is None  # no hmrmamba-s / pmce in the tiny run
    table = efficiency_table(written)
    assert "GMAC/s" in table and "% of matmul peak" in table and "GFLOP/s" in table
    assert f"CPU selective scan: {written['cpu_scan']}" in table and "Online: tiny-online" in table


def test_gmacs_per_s_known_answer():
    """GMAC/s = MACs x batch / median time, from one fabricated row; % of peak = 2 x GMAC/s / matmul GFLOP/s."""
    from hmrmamba.efficiency.benchmark import _add_rates

    assert gmacs_per_s(6_000_000_000, 0.5) == 12.0
    assert gmacs_per_s(6_000_000_000, 0.5, batch=2) == 24.0
    assert gmacs_per_s(None, 0.5) is None and gmacs_per_s(1, 0.0) is None
    rows = {"m": {"macs": 3_000_000_000, "batch": 1, "latency_ms": 250.0}, "no_macs": {"latency_ms": 1.0}}
    _add_rates(rows, 48.0)
    assert rows["m"]["gmacs_per_s"] == 12.0
    assert rows["m"]["pct_of_matmul_peak"] == 50.0  # 2 x 12 GMAC/s = 24 GFLOP/s of 48
    assert "gmacs_per_s" not in rows["no_macs"]
    assert pct_of_matmul_peak(12.0, None) is None


def test_matmul_flop_count_and_measurement():
    assert matmul_flops(1) == 2 and matmul_flops(3) == 54 and matmul_flops(1024) == 2 * 1024 ** 3
    out = measure_matmul(64, repeats=2, warmup=1)
    assert out["flops"] == matmul_flops(64) and out["threads"] == torch.get_num_threads()
    assert 0 < out["gflops_per_s"] < float("inf") and len(out["runs_ms"]) == 2


def test_new_targets_known_answers():
    metrics = {"scaling": {"scope": "lifter", "ratio_gmacs_per_s_hmrmamba_s_over_pmce": {"243": 0.45}},
               "online": {"online": "tiny-online", "offline": "tiny", "window": 16, "ratio": 0.2}}
    rows = {r["key"]: r for r in check_targets(metrics)}
    rate, online = rows["s_vs_pmce_gmacs_per_s_t243"], rows["online_step_vs_window"]
    assert rate["met"] is False and rate["missed_by"] == 2.0
    assert online["met"] is True and "16-frame tiny window" in online["what"]
