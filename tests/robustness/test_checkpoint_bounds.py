"""Checkpoints are input too: a stored config that asks for an absurd model is refused before the
model is built, a ``last.pt`` whose optimizer state does not fit is a one-line error, and no
message passes on torch's advice to load with ``weights_only=False``."""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest
import torch

from hmrmamba.errors import InputError

from .support import expect_clean_failure


def _tiny_checkpoint(path, *, model_cfg=None, train=None):
    from hmrmamba.models.registry import build_from_config, resolve_config
    from hmrmamba.train.checkpoint import save_checkpoint

    cfg = resolve_config("tiny")
    model = build_from_config(cfg, lift_only=True)
    save_checkpoint(path, model=model, epoch=1, step=1,
                    config={"model": model_cfg if model_cfg is not None else cfg, "stage": "train_lift",
                            "train": train if train is not None else {"window": 8, "stride": 8}})
    return path, cfg


def _with(cfg: dict, dotted: str, value) -> dict:
    import copy

    out = copy.deepcopy(cfg)
    node = out
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    node[last] = value
    return out


ABSURD = [
    ("lifter.depth", 20000),
    ("lifter.dim", 60000),
    ("lifter.dim", -5),
    ("lifter.dim", "abc"),
    ("lifter.dim", 32.5),
    ("lifter.dim", True),
    ("max_frames", 10**9),
    ("max_frames", 1e9),
    ("feat_dim", float("nan")),
    ("lifter.drop_path", float("inf")),
    ("reconstructor.decoder_depth", 10**6),
]


@pytest.mark.parametrize("key,value", ABSURD, ids=[f"{k}={v!r}" for k, v in ABSURD])
def test_stored_config_with_absurd_sizes_is_refused_before_building(tmp_path, reliability, key, value):
    from hmrmamba.models.registry import build_from_config
    from hmrmamba.train.checkpoint import load_checkpoint, model_from_checkpoint

    path, cfg = _tiny_checkpoint(tmp_path / "best.pt")
    path, _ = _tiny_checkpoint(path, model_cfg=_with(cfg, key, value))
    built = []

    def build(c):
        built.append(c)
        return build_from_config(c, lift_only=True)

    tracemalloc.start()
    t0 = time.perf_counter()
    for call in (lambda: load_checkpoint(path), lambda: model_from_checkpoint(path, build=build)):
        expect_clean_failure(call, file=path, field=f"config.model.{key}", watch=[tmp_path])
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not built, "the model was built from the stored config"
    assert seconds < 2.0 and peak < 64 << 20, (seconds, peak)
    reliability.bad_input("checkpoint (load_checkpoint / model_from_checkpoint)", f"stored config {key}: {value!r}")


def test_stored_train_window_of_1e9_is_refused(tmp_path, reliability):
    from hmrmamba.train.checkpoint import load_checkpoint

    path, _ = _tiny_checkpoint(tmp_path / "best.pt", train={"window": 10**9, "stride": 8})
    expect_clean_failure(lambda: load_checkpoint(path), file=path, field="config.train.window",
                         match=r"\[1, 100000\]")
    reliability.bad_input("checkpoint (load_checkpoint)", "stored train.window 1e9")


def test_sizes_each_in_bounds_whose_product_is_absurd_are_refused_by_the_parameter_count(tmp_path, reliability):
    """dim 8192 x depth 128 passes every per-key bound; counting on the meta device refuses it."""
    from hmrmamba.models.registry import build_from_config
    from hmrmamba.train.checkpoint import MAX_PARAMETERS, model_from_checkpoint

    path, cfg = _tiny_checkpoint(tmp_path / "best.pt")
    big = _with(_with(cfg, "lifter.dim", 8192), "lifter.depth", 128)
    path, _ = _tiny_checkpoint(path, model_cfg=big)
    tracemalloc.start()
    t0 = time.perf_counter()
    err = expect_clean_failure(lambda: model_from_checkpoint(path, build=lambda c: build_from_config(c, lift_only=True)),
                               file=path, field="config.model", match="parameters")
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"{MAX_PARAMETERS:,}" in str(err)
    assert seconds < 10 and peak < 256 << 20, (seconds, peak)
    reliability.bad_input("checkpoint (model_from_checkpoint)", "lifter dim 8192 x depth 128 (> 400M parameters)")


def test_a_good_stored_config_still_rebuilds_the_same_model(tmp_path):
    from hmrmamba.models.registry import build_from_config
    from hmrmamba.train.checkpoint import load_checkpoint, model_from_checkpoint

    path, cfg = _tiny_checkpoint(tmp_path / "best.pt")
    model, ckpt = model_from_checkpoint(path, build=lambda c: build_from_config(c, lift_only=True))
    stored = load_checkpoint(path)["model"]
    assert set(model.state_dict()) == set(stored)
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[k]), k
    assert ckpt["config"]["model"] == cfg


@pytest.mark.parametrize("case", ["no param_groups", "wrong group count", "state of a string"])
def test_last_pt_with_a_bad_optimizer_state_is_a_one_line_error(tmp_path, reliability, case):
    from hmrmamba.train import _selftest as st
    from hmrmamba.train.checkpoint import load_checkpoint, save_checkpoint
    from hmrmamba.train import Trainer, make_loader

    def trainer(epochs):
        model = st.toy_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        data = st.toy_dataset(16)
        return Trainer(model, step_fn=st.mse_step(), optimizer=opt,
                       train_loader=make_loader(data, batch_size=8, shuffle=True, seed=0), val_fn=st.mse_val(data),
                       epochs=epochs, ckpt_dir=tmp_path, seed=0, monitor="val_mse", progress=False)

    trainer(1).fit()
    last = tmp_path / "last.pt"
    ck = load_checkpoint(last)
    opt_state = dict(ck["optimizer"])
    if case == "no param_groups":
        opt_state.pop("param_groups")
    elif case == "wrong group count":
        opt_state["param_groups"] = opt_state["param_groups"] * 2
    else:
        opt_state["state"] = "abc"
    save_checkpoint(last, model=st.toy_model(), epoch=ck["epoch"], step=ck["step"], best_metric=ck["best_metric"],
                    rng_states=ck["rng_states"], config=ck["config"], extra=ck["extra"])
    raw = torch.load(last, weights_only=True)
    raw["optimizer"] = opt_state
    torch.save(raw, last)
    err = expect_clean_failure(lambda: trainer(2).fit(), file=last, field="optimizer", watch=[tmp_path])
    assert "\n" not in str(err)
    reliability.bad_input("Trainer.fit(resume) last.pt", f"optimizer state: {case}")


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("reader", ["load_checkpoint", "load_backbone_weights"])
def test_messages_never_advise_weights_only_false(tmp_path, reliability, reader):
    from hmrmamba.features.resnet import ResNet50
    from hmrmamba.features.weights import load_backbone_weights
    from hmrmamba.train.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    call = (lambda: load_checkpoint(path)) if reader == "load_checkpoint" else \
        (lambda: load_backbone_weights(ResNet50(init_seed=0), path))
    err = expect_clean_failure(call, file=path)
    msg = str(err)
    assert "weights_only" not in msg and "trusted source" not in msg, msg
    assert "posix.system" in msg, msg
    assert err.__cause__ is None or "weights_only" not in str(err.__cause__), "the advice travels in the cause"
    reliability.bad_input(f"{reader}", "torch payload: refused without suggesting weights_only=False")
