"""docs/results.md: the run plan (dedup across tables), labels, spreads and the rendered tables."""

import json
import statistics

import pytest

from hmrmamba.report import results as R
from hmrmamba.errors import InputError, MissingFileError

PARAMS = {
    "profile": "default",
    "experiment": {"variant": "tiny", "detector": "cpn", "overrides": {}},
    "detect2d": {"sources": ["gt", "sh", "detectron", "cpn"]},
    "train_lift": {"epochs": 12}, "train_mesh": {"epochs": 3},
    "results": {"seeds": [0, 1, 2], "table1": ["tiny", "pmce-tiny", "mlp"],
                "table2": ["sh", "detectron", "cpn", "gt"], "table3": ["ga", "ga+em", "ga+im", "em+im", "full"]},
}


def test_plan_runs_each_distinct_chain_once():
    plan = R.make_plan(PARAMS)
    runs = plan.runs()
    # every row over 3 seeds: table1 3x3, table2 adds sh/detectron/gt x3, table3 adds four partial rows x3;
    # the full model on cpn is the same run in all three tables, seed by seed
    assert len(runs) == 9 + 3 * 3 + 4 * 3
    for seed in range(3):
        shared = plan.tables["table1"]["tiny"][seed]
        assert plan.tables["table2"]["cpn"][seed] == shared == plan.tables["table3"]["full"][seed]
        assert shared.seed == seed
    assert [r.seed for r in plan.tables["table3"]["em+im"]] == [0, 1, 2]
    assert len({r.label for r in runs}) == len(runs)
    assert plan.tables["table3"]["ga+em"][0].label == "tiny-cpn-ga-em-s0"
    assert plan.tables["table3"]["ga+em"][0].experiment()["overrides"] == {"ga": True, "em": True, "im": False}
    assert plan.tables["table1"]["mlp"][2].params() == {"train_lift.seed": 2, "train_mesh.seed": 2}


@pytest.mark.parametrize("label,flags", [("full", (1, 1, 1)), ("ga", (1, 0, 0)), ("em+im", (0, 1, 1))])
def test_ablation_labels_round_trip(label, flags):
    got = R.ablation_flags(label)
    assert tuple(int(got[k]) for k in R.FLAGS) == flags
    assert R.ablation_label(got) == label


@pytest.mark.parametrize("section,value,field", [
    ("table1", ["nope"], "results.table1"), ("table2", ["openpose"], "results.table2"),
    ("table3", ["ga+xx"], "results.table3"), ("seeds", [1, 1], "results.seeds")])
def test_bad_plans_name_the_field(section, value, field):
    params = {**PARAMS, "results": {**PARAMS["results"], section: value}}
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        R.make_plan(params)


def _fake_runs(tmp_path, plan):
    projects = {}
    for i, r in enumerate(plan.runs()):
        d = tmp_path / r.label / "metrics"
        d.mkdir(parents=True)
        m = {"mpjpe": 100.0 + i, "pa_mpjpe": 50.0 + i, "mpvpe": 120.0 + i, "accel": 5.0}
        (d / "evaluate.json").write_text(json.dumps({"synthetic": m, "stage1": {"synthetic": {"mpjpe": 99.0}}}))
        (d / "train_lift.json").write_text(json.dumps({"params_m": 0.58, "seconds": 10}))
        projects[r] = tmp_path / r.label
    return projects


def test_render_reports_mean_and_std_over_seeds(tmp_path):
    plan = R.make_plan(PARAMS)
    found = R.collect(plan, _fake_runs(tmp_path, plan))
    md = R.render(plan, found, params=PARAMS, dataset="synthetic", baseline={"mpjpe": 300.0, "pa_mpjpe": 90.0,
                                                                             "accel": 4.0})
    tiny = [found[r.label]["synthetic"]["mpjpe"] for r in plan.tables["table1"]["tiny"]]
    want = f"{statistics.mean(tiny):.1f} ± {statistics.stdev(tiny):.1f}"
    row = next(line for line in md.splitlines() if line.startswith("| `tiny`"))
    assert want in row and "0.58" in row
    assert "| mean pose (no model) | 0 | 300.0 | 90.0 | – | 4.0 | – |" in md
    assert "| ga | ✓ | ✗ | ✗ |" in md
    assert "not on\nHuman3.6M" in md or "not on Human3.6M" in md.replace("\n", " ")
    assert "the best model is" in md


def test_collect_lists_every_missing_run(tmp_path):
    plan = R.make_plan(PARAMS)
    projects = _fake_runs(tmp_path, plan)
    gone = [r for r in plan.runs()][:2]
    for r in gone:
        (projects[r] / "metrics/evaluate.json").unlink()
    with pytest.raises(MissingFileError) as err:
        R.collect(plan, projects)
    assert all(r.label in str(err.value) for r in gone)


def _table_results(rows):
    """{row: [mpjpe per seed]} -> (plan tables entry, results) with runs labelled per row and seed."""
    table, results = {}, {}
    for row, values in rows.items():
        flags = R.ablation_flags(row)
        over = tuple(flags.items()) if not all(flags.values()) else ()
        table[row] = [R.Run("tiny", "cpn", s, over) for s in range(len(values))]
        for run, v in zip(table[row], values):
            results[run.label] = {"synthetic": {"mpjpe": v}}
    return table, results


def test_separated_pairs_use_twice_the_larger_seed_std():
    # full: mean 80, std 1; ga: mean 83, std 1 -> 3 > 2 separated; ga+em: mean 81, std 2 -> within 4 of both
    table, results = _table_results({"full": [79.0, 80.0, 81.0], "ga": [82.0, 83.0, 84.0],
                                     "ga+em": [79.0, 81.0, 83.0]})
    pairs, spread = R.separated_pairs(table, results, "synthetic")
    assert pairs == ["`full` 80.0 < `ga` 83.0 (Δ 3.0 mm)"]
    assert spread == pytest.approx(2.0)


def test_removal_effects_are_paired_per_seed():
    # em+im (no GA) is worse than full by 2, 4, 6 on seeds 0..2: mean 4, std 2
    table, results = _table_results({"full": [80.0, 70.0, 90.0], "em+im": [82.0, 74.0, 96.0],
                                     "ga+im": [80.0, 70.0, 90.0]})
    effects = R.removal_effects(table, results, "synthetic")
    assert effects["GA"] == pytest.approx((4.0, 2.0, 3))
    assert effects["EM"] == pytest.approx((0.0, 0.0, 3))
    assert "IM" not in effects  # no ga+em row
    found = R.findings(R.Plan(tables={"table3": table}), results, dataset="synthetic")
    assert any("GA +4.0 ± 2.0 mm (within noise)" in f for f in found)


def test_backbone_note_states_the_probe():
    note = R.backbone_note({"probe_mm": 196.7, "floor_mm": 193.5})
    assert "196.7 mm" in note and "193.5 mm" in note
    assert "probe" not in R.backbone_note(None)
