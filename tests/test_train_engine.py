"""The generic training engine: determinism, exact resume after SIGKILL, atomic checkpoints, NaN stop,
mismatched-checkpoint errors and a 2-process gloo DDP run equal to a single-process run."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.train import (
    NonFiniteLossError,
    Trainer,
    load_checkpoint,
    load_model_state,
    make_loader,
    model_from_checkpoint,
    save_checkpoint,
    seed_loader_epoch,
)
from hmrmamba.train import _selftest as st

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def history_epochs(path: Path) -> list[int]:
    with open(path) as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def selftest(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hmrmamba.train._selftest", *args], env=ENV,
                          capture_output=True, text=True, timeout=120, check=check)


# ---------------------------------------------------------------------------- seeding


_RNG_ROUND_TRIP = """
import json, random, sys
from pathlib import Path
import numpy as np
import torch
from torch import nn
from hmrmamba.train import capture_rng_states, load_checkpoint, restore_rng_states, save_checkpoint, seed_everything

path = Path(sys.argv[1]) / "c.pt"
seed_everything(7)
random.gauss(0, 1), np.random.normal(), torch.randn(1)       # leave cached gaussians in play
save_checkpoint(path, model=nn.Linear(1, 1), epoch=0, step=0, rng_states=capture_rng_states())
first = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.randn(3).tolist())
restore_rng_states(load_checkpoint(path)["rng_states"])
again = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.randn(3).tolist())
print(json.dumps([first, again]))
"""


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """In a fresh interpreter: threads that earlier tests leave running in this one (servers' clients)
    may draw from Python's global ``random`` between the capture and the draws."""
    out = subprocess.run([sys.executable, "-c", _RNG_ROUND_TRIP, str(tmp_path)], env=ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    first, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == again  # exact floats: Python's, numpy's and torch's streams all continue as captured


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    data = st.toy_dataset(40)

    def order(loader, epoch):
        seed_loader_epoch(loader, 5, epoch)
        return torch.cat([x for x, _ in loader]).sum(1).tolist()

    walked = make_loader(data, batch_size=8, shuffle=True, seed=5)
    seq = [order(walked, e) for e in (1, 2, 3)]
    fresh = make_loader(data, batch_size=8, shuffle=True, seed=5)
    assert order(fresh, 3) == seq[2]                      # no dependence on the epochs walked before
    assert seq[0] != seq[1] != seq[2]                     # but a new order each epoch
    assert sorted(seq[0]) == sorted(seq[1])               # a permutation of the same samples
    assert order(make_loader(data, batch_size=8, shuffle=True, seed=6), 3) != seq[2]


def test_two_runs_with_the_same_seed_are_bit_identical(tmp_path):
    a = st.run(ckpt_dir=tmp_path / "a", epochs=2, noisy=True)
    b = st.run(ckpt_dir=tmp_path / "b", epochs=2, noisy=True)
    c = st.run(ckpt_dir=tmp_path / "c", epochs=2, noisy=True, seed=1)
    wa, wb, wc = (weights(r.last_checkpoint) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# ---------------------------------------------------------------------------- resume


def test_sigkill_in_epoch_3_then_resume_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ["--epochs", "4", "--noisy"]                 # dropout + torch/numpy/python noise: all RNGs matter
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                              # as in the subprocesses (OMP_NUM_THREADS=1)
    try:
        st.run(ckpt_dir=full, epochs=4, noisy=True)
    finally:
        torch.set_num_threads(threads)
    # 64 samples / batch 8 = 8 steps per epoch; step 20 is batch 4 of epoch 3.
    proc = selftest("--ckpt-dir", str(killed), *common, "--kill-at-step", "20",
                    "--log-file", str(killed / "log.jsonl"), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(killed / "last.pt")["epoch"] == 2
    assert history_epochs(killed / "history.csv") == [1, 2]

    out = selftest("--ckpt-dir", str(killed), *common, "--log-file", str(killed / "log.jsonl"))
    assert json.loads(out.stdout.strip().splitlines()[-1])["start_epoch"] == 3
    wf, wk = weights(full / "last.pt"), weights(killed / "last.pt")
    assert wf.keys() == wk.keys() and all(torch.equal(wf[k], wk[k]) for k in wf)
    assert history_epochs(killed / "history.csv") == [1, 2, 3, 4]
    logged = [json.loads(line)["epoch"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]                          # log_fn saw every epoch exactly once
    ck_full, ck_killed = load_checkpoint(full / "last.pt"), load_checkpoint(killed / "last.pt")
    assert ck_full["step"] == ck_killed["step"] == 32
    strip = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in ck_full["extra"]["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in ck_killed["extra"]["history"]]
    assert sorted(p.name for p in killed.iterdir()) == ["best.pt", "history.csv", "last.pt", "log.jsonl"]


def test_resume_of_a_finished_run_trains_nothing_and_extends_when_asked(tmp_path):
    first = st.run(ckpt_dir=tmp_path, epochs=2)
    (tmp_path / ".last.pt.k1ll3d.tmp").write_bytes(b"torn")      # left by a kill during a save
    again = st.run(ckpt_dir=tmp_path, epochs=2)
    assert not (tmp_path / ".last.pt.k1ll3d.tmp").exists()
    assert again.resumed and again.start_epoch == 3 and len(again.history) == 2
    assert all(torch.equal(a, b) for a, b in zip(weights(first.last_checkpoint).values(),
                                                  weights(again.last_checkpoint).values()))
    longer = st.run(ckpt_dir=tmp_path, epochs=3)
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]
    straight = st.run(ckpt_dir=tmp_path / "straight", epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(weights(longer.last_checkpoint).values(),
                                                  weights(straight.last_checkpoint).values()))


def test_a_per_step_schedule_steps_with_the_optimiser_and_resumes_exactly(tmp_path):
    """ExponentialLR(0.99) stepped per batch: 64 samples / 8 = 8 steps an epoch, so epoch e trains at
    lr 0.99^(8 (e - 1)); a run resumed after epoch 2 ends on the uninterrupted run's weights."""
    straight = st.run(ckpt_dir=tmp_path / "a", epochs=3, scheduler_interval="step")
    assert [r["lr"] for r in straight.history] == pytest.approx([1e-2 * 0.99 ** (8 * e) for e in range(3)])
    per_epoch = st.run(ckpt_dir=tmp_path / "b", epochs=3)
    assert [r["lr"] for r in per_epoch.history] == pytest.approx([1e-2 * 0.99 ** e for e in range(3)])
    st.run(ckpt_dir=tmp_path / "c", epochs=2, scheduler_interval="step")
    resumed = st.run(ckpt_dir=tmp_path / "c", epochs=3, scheduler_interval="step")
    assert resumed.resumed and all(torch.equal(a, b) for a, b in zip(weights(straight.last_checkpoint).values(),
                                                                       weights(resumed.last_checkpoint).values()))
    with pytest.raises(InputError, match="scheduler_interval"):
        st.run(ckpt_dir=tmp_path / "d", epochs=1, scheduler_interval="batch")


def test_weight_average_follows_the_recurrence_with_a_warmed_up_decay():
    from hmrmamba.train.ema import WeightAverage

    model = nn.Linear(3, 2)
    avg = WeightAverage(model, 0.9)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    expected = dict(start)
    for t in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0 + t)
        d = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25, ... then capped at 0.9
        assert avg.current_decay() == pytest.approx(d)
        avg.update(model)
        expected = {k: d * expected[k] + (1 - d) * v.detach() for k, v in model.named_parameters()}
    for k, v in avg.module.named_parameters():
        assert torch.allclose(v, expected[k], atol=1e-6) and not v.requires_grad
    with pytest.raises(InputError, match="ema"):
        WeightAverage(model, 1.0)


def test_ema_validates_and_keeps_best_on_the_average_and_resumes_exactly(tmp_path):
    """best.pt holds the averaged weights (validated), last.pt the training weights and the average; a run
    resumed after epoch 2 ends on the uninterrupted run's weights and average, bit for bit."""
    from hmrmamba.train.ema import WeightAverage

    straight = st.run(ckpt_dir=tmp_path / "a", epochs=3, noisy=True, ema_decay=0.9)
    last = load_checkpoint(straight.last_checkpoint)
    ema = last["extra"]["ema"]
    assert ema["updates"] == 24 and ema["decay"] == 0.9  # 64 samples / batch 8 = 8 updates an epoch
    assert not all(torch.equal(ema["params"][k], last["model"][k]) for k in ema["params"])
    best = load_checkpoint(straight.best_checkpoint)
    if straight.best_epoch == 3:
        assert all(torch.equal(best["model"][k], ema["params"][k]) for k in ema["params"])
    # the monitor is the average's: re-validating best.pt's weights gives the logged best metric
    model = st.toy_model()
    model.load_state_dict(best["model"])
    with torch.no_grad():
        again = st.mse_val(st.toy_dataset(64, seed=1234))(model.eval())["mse"]
    assert again == pytest.approx(straight.best_metric, rel=1e-6)
    plain = st.run(ckpt_dir=tmp_path / "p", epochs=3, noisy=True)
    assert all(torch.equal(a, b) for a, b in zip(weights(plain.last_checkpoint).values(), last["model"].values()))
    assert plain.history[-1]["val_mse"] != straight.history[-1]["val_mse"]

    st.run(ckpt_dir=tmp_path / "b", epochs=2, noisy=True, ema_decay=0.9)
    resumed = st.run(ckpt_dir=tmp_path / "b", epochs=3, noisy=True, ema_decay=0.9)
    other = load_checkpoint(resumed.last_checkpoint)
    assert resumed.resumed and other["extra"]["ema"]["updates"] == 24
    assert all(torch.equal(other["extra"]["ema"]["params"][k], v) for k, v in ema["params"].items())
    assert all(torch.equal(other["model"][k], v) for k, v in last["model"].items())
    with pytest.raises(InputError, match="extra.ema.params"):
        WeightAverage(nn.Linear(4, 3), 0.9).load_state_dict(ema, nn.Linear(4, 3), source="x.pt")


def test_stop_check_stops_after_the_epoch_and_the_run_can_resume(tmp_path):
    res = st.run(ckpt_dir=tmp_path, epochs=4, stop_check=lambda m, e: e == 2)
    assert res.stopped_early and [r["epoch"] for r in res.history] == [1, 2]
    assert st.run(ckpt_dir=tmp_path, epochs=4).history[-1]["epoch"] == 4


def test_resume_with_another_monitor_is_refused(tmp_path):
    st.run(ckpt_dir=tmp_path, epochs=1)
    with pytest.raises(InputError, match="monitor"):
        st.run(ckpt_dir=tmp_path, epochs=2, mode="max")


# ---------------------------------------------------------------------------- checkpoints


def test_failing_save_leaves_the_old_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    model = nn.Linear(3, 2)
    save_checkpoint(path, model=model, epoch=1, step=10, config={"model": {"d": 3}})
    before = path.read_bytes()

    def torn_save(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, epoch=2, step=20)
    monkeypatch.undo()
    with pytest.raises(InputError, match="config.bad"):           # unstorable config: nothing written
        save_checkpoint(path, model=model, epoch=3, step=30, config={"bad": object()})
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_or_foreign_files_raise_input_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, model=nn.Linear(2, 2), epoch=1, step=1)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "raw.pt")
    with pytest.raises(InputError, match="format"):
        load_checkpoint(tmp_path / "raw.pt")
    with pytest.raises(MissingFileError):
        load_checkpoint(tmp_path / "absent.pt")


def test_wrong_variant_checkpoint_lists_mismatched_keys(tmp_path):
    src = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    path = tmp_path / "lift.pt"
    save_checkpoint(path, model=src, epoch=1, step=1)
    other = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2), nn.Linear(2, 2))
    with pytest.raises(InputError) as err:
        load_model_state(other, load_checkpoint(path)["model"], source=path)
    msg = str(err.value)
    assert "lift.pt" in msg and "2 missing keys (3.weight, 3.bias)" in msg
    assert "3 shape mismatches" in msg and "0.weight: checkpoint (16, 4) vs model (32, 4)" in msg
    assert "unexpected" not in msg


def test_model_rebuilds_from_the_checkpoint_alone(tmp_path):
    res = st.run(ckpt_dir=tmp_path, epochs=1)
    model, ckpt = model_from_checkpoint(res.best_checkpoint, build=lambda cfg: st.toy_model(**cfg))
    assert ckpt["config"]["model"] == {"hidden": 16} and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ckpt["model"].values()))


# ---------------------------------------------------------------------------- failures and options


def test_nan_loss_names_epoch_and_batch_and_keeps_last_checkpoint(tmp_path):
    data = st.toy_dataset(32)
    model = st.toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    base = st.mse_step()
    calls = [0]

    def step(m, batch):
        calls[0] += 1
        out = base(m, batch)
        if calls[0] == 4 + 3:                           # epoch 2 (4 batches per epoch), batch index 2
            out["total"] = out["total"] * float("nan")
        return out

    trainer = Trainer(model, step_fn=step, optimizer=opt, train_loader=make_loader(data, batch_size=8,
                      shuffle=True, seed=0), val_fn=st.mse_val(data), epochs=3, ckpt_dir=tmp_path, seed=0,
                      monitor="val_mse", progress=False)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 2") as err:
        trainer.fit()
    assert isinstance(err.value, FloatingPointError) and "last.pt" in str(err.value)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert history_epochs(tmp_path / "history.csv") == [1]


def test_amp_and_compile_are_ignored_on_cpu_with_a_message(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hmrmamba.train.loop"):
        a = st.run(ckpt_dir=tmp_path / "a", epochs=1, amp=True, compile=True)
    assert "amp=True ignored" in caplog.text and "compile=True ignored" in caplog.text
    b = st.run(ckpt_dir=tmp_path / "b", epochs=1)
    assert all(torch.equal(x, y) for x, y in zip(weights(a.last_checkpoint).values(),
                                                  weights(b.last_checkpoint).values()))


def test_bad_step_fn_output_and_unknown_monitor_raise_input_error(tmp_path):
    data = st.toy_dataset(16)
    model = st.toy_model()
    kw = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "epochs": 1, "seed": 0, "progress": False,
          "train_loader": make_loader(data, batch_size=8, shuffle=False, seed=0)}
    with pytest.raises(InputError, match="total"):
        Trainer(model, step_fn=lambda m, b: {"loss": m(b[0]).sum()}, ckpt_dir=tmp_path / "a", **kw).fit()
    with pytest.raises(InputError, match="val_mpjpe"):
        Trainer(model, step_fn=st.mse_step(), val_fn=st.mse_val(data), ckpt_dir=tmp_path / "b", **kw).fit()


# ---------------------------------------------------------------------------- DDP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_single_process_with_the_same_global_batch(tmp_path):
    ddp_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "hmrmamba.train._selftest", "--ckpt-dir", str(ddp_dir),
           "--epochs", "2", "--batch-size", "4", "--log-file", str(tmp_path / "ddp.jsonl")]
    proc = subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in ddp_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    assert history_epochs(ddp_dir / "history.csv") == [1, 2]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "ddp.jsonl").read_text().splitlines()] == [1, 2]
    ck = load_checkpoint(ddp_dir / "last.pt")
    assert ck["extra"]["world_size"] == 2 and len(ck["rng_states"]) == 2 and ck["step"] == 2 * 8

    single = st.run(ckpt_dir=tmp_path / "single", epochs=2, batch_size=8)
    ws = weights(single.last_checkpoint)
    assert ws.keys() == ck["model"].keys()
    for k in ws:
        torch.testing.assert_close(ck["model"][k], ws[k], rtol=1e-5, atol=1e-6)
    for r_ddp, r_one in zip(ck["extra"]["history"], single.history):
        assert r_ddp["train_loss"] == pytest.approx(r_one["train_loss"], rel=1e-5)
        assert r_ddp["val_mse"] == pytest.approx(r_one["val_mse"], rel=1e-5)
