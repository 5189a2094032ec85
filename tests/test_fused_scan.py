"""Tests of the fused CPU selective scan (hmrmamba.ssm.fused, csrc/selective_scan.c): outputs and every
gradient against the PyTorch scan and the reference in float64, streaming, input errors, the build
cache and the fallback when no compiler works."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from hmrmamba.errors import InputError
from hmrmamba.ssm import Mamba, build, fused
from hmrmamba.ssm.backend import cpu_scan_status, scan_channels_last
from hmrmamba.ssm.scan import selective_scan, selective_scan_ref, selective_scan_torch

F64 = torch.float64
GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
REQUIRED = {"u", "delta", "A", "B", "C"}


def _compiler_available() -> bool:
    return shutil.which(build.compiler()) is not None


needs_fused = pytest.mark.skipif(not _compiler_available(), reason="no C compiler: the fused scan cannot be built")


@pytest.fixture(autouse=True)
def _fresh_library_cache():
    """Each test sees the library loader as after import, and leaves it that way."""
    fused.load_library.cache_clear()
    yield
    fused.load_library.cache_clear()


@pytest.fixture
def fused_on(monkeypatch):
    monkeypatch.delenv(fused.SCAN_ENV, raising=False)
    if not fused.fused_available():
        pytest.skip(f"fused scan unavailable: {fused.load_library()[1]}")


def make_inputs(b=2, d=6, L=7, n=4, groups=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    bc_shape = (b, n, L) if groups is None else (b, *groups, n, L)
    return {"u": r(b, d, L), "delta": r(b, d, L, scale=0.5),
            "A": (-torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1).requires_grad_(),
            "B": r(*bc_shape), "C": r(*bc_shape),
            "D": r(d), "z": r(b, d, L), "delta_bias": r(d, scale=0.3), "initial_state": r(b, d, n)}


def outputs_and_grads(fn, inp, *, use_h0=True, softplus=True, optional=True):
    """(out, last state, {name: gradient}) of a weighted loss of out and the last state."""
    kw = {"D": inp["D"], "z": inp["z"], "delta_bias": inp["delta_bias"]} if optional else {}
    names = [k for k in GRAD_NAMES if (use_h0 or k != "initial_state") and (optional or k in REQUIRED)]
    out, last = fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kw, delta_softplus=softplus,
                   return_last_state=True, initial_state=inp["initial_state"] if use_h0 else None)
    w_out = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    w_last = torch.linspace(0.5, -1, last.numel(), dtype=last.dtype).view_as(last)
    loss = (out * w_out).sum() + (last * w_last).sum()
    grads = torch.autograd.grad(loss, [inp[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads, strict=True))


def assert_same(a, b, rtol=1e-10, atol=1e-10):
    out_a, last_a, g_a = a
    out_b, last_b, g_b = b
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=atol)
    torch.testing.assert_close(last_a, last_b, rtol=rtol, atol=atol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=rtol, atol=atol, msg=f"gradient of {name}")


# ---------------------------------------------------------------- parity


@needs_fused
@pytest.mark.parametrize("L", [1, 2, 3, 16, 17, 63, 64, 65, 128, 243])
@pytest.mark.parametrize("use_h0", [False, True])
def test_fused_matches_torch_scan_all_gradients(L, use_h0, fused_on):
    # d = 40: two 16-channel SIMD tiles and 8 channels on the one-row path
    inp = make_inputs(b=3, d=40, L=L, n=8, seed=L)
    assert_same(outputs_and_grads(selective_scan, inp, use_h0=use_h0),
                outputs_and_grads(selective_scan_torch, inp, use_h0=use_h0))


@needs_fused
@pytest.mark.parametrize(("d", "groups", "n"), [
    (6, None, 4),      # rows only
    (32, (2,), 16),    # B and C groups of 16: whole tiles
    (48, (2,), 5),     # groups of 24: the middle tile straddles a group boundary; odd d_state
    (48, (6,), 3),     # groups of 8: rows only
    (48, (3,), 16),
])
@pytest.mark.parametrize("L", [1, 17, 63])
def test_fused_matches_reference_with_groups(d, groups, n, L, fused_on):
    inp = make_inputs(b=2, d=d, L=L, n=n, groups=groups, seed=d + L)
    assert_same(outputs_and_grads(selective_scan, inp), outputs_and_grads(selective_scan_ref, inp), rtol=1e-9, atol=1e-9)


@needs_fused
def test_fused_b_and_c_with_different_groups(fused_on):
    inp = make_inputs(b=2, d=32, L=17, n=8, seed=3)
    g = torch.Generator().manual_seed(4)
    inp["B"] = torch.randn(2, 2, 8, 17, generator=g, dtype=F64).requires_grad_()  # groups of 16
    inp["C"] = torch.randn(2, 8, 17, generator=g, dtype=F64).requires_grad_()  # shared
    assert_same(outputs_and_grads(selective_scan, inp), outputs_and_grads(selective_scan_torch, inp))


@needs_fused
@pytest.mark.parametrize("softplus", [False, True])
def test_fused_without_optional_inputs(softplus, fused_on):
    inp = make_inputs(b=2, d=16, L=20, n=4, seed=9)
    for use_h0 in (False, True):
        a = outputs_and_grads(selective_scan, inp, use_h0=use_h0, softplus=softplus, optional=False)
        b = outputs_and_grads(selective_scan_torch, inp, use_h0=use_h0, softplus=softplus, optional=False)
        assert_same(a, b)


@needs_fused
def test_fused_only_output_or_only_last_state_used(fused_on):
    inp = make_inputs(b=2, d=16, L=9, n=4, seed=2)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C")]
    for pick in (0, 1):
        grads = []
        for fn in (selective_scan, selective_scan_torch):
            res = fn(*args, D=inp["D"], return_last_state=True, initial_state=inp["initial_state"])
            grads.append(torch.autograd.grad(res[pick].sum(), args + [inp["initial_state"]], allow_unused=True))
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_fused
def test_fused_float32_close_to_float64_and_dtypes(fused_on):
    inp = {k: v.detach() for k, v in make_inputs(b=3, d=48, L=50, n=16, seed=11).items()}
    kw = {"D": inp["D"], "z": inp["z"], "delta_bias": inp["delta_bias"], "delta_softplus": True,
          "return_last_state": True}
    args = [inp[k] for k in ("u", "delta", "A", "B", "C")]
    out64, last64 = selective_scan(*args, **kw)
    out32, last32 = selective_scan(*[a.float() for a in args], **{k: v.float() if torch.is_tensor(v) else v
                                                                 for k, v in kw.items()})
    assert out32.dtype == torch.float32 and last32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last32.double(), last64, rtol=1e-4, atol=1e-4)
    out16 = selective_scan(args[0].bfloat16(), *args[1:], **kw)[0]
    assert out16.dtype == torch.bfloat16


@needs_fused
def test_fused_float32_softplus_and_strong_decay(fused_on):
    """The vectorised float exp/softplus: wide delta range, exp(delta A) down to underflow."""
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 32, 30, generator=g)
    delta = torch.linspace(-30, 150, 2 * 32 * 30).view(2, 32, 30)
    A = -torch.arange(1, 17, dtype=torch.float32).repeat(32, 1)
    B, C = torch.randn(2, 16, 30, generator=g), torch.randn(2, 16, 30, generator=g)
    for sp in (False, True):
        d = delta.abs() if not sp else delta
        out, last = selective_scan(u, d, A, B, C, delta_softplus=sp, return_last_state=True)
        ref, ref_last = selective_scan_torch(u, d, A, B, C, delta_softplus=sp, return_last_state=True)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)


@needs_fused
def test_fused_gradcheck(fused_on):
    inp = make_inputs(b=1, d=17, L=5, n=2, seed=3)
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["delta_bias"])
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True,
                                  return_last_state=True), args)


# ---------------------------------------------------------------- streaming


@needs_fused
@pytest.mark.parametrize("split", [1, 16, 29])
def test_fused_scan_in_pieces_equals_one_scan(split, fused_on):
    inp = make_inputs(b=2, d=32, L=30, n=8, seed=7)
    kw = {"D": inp["D"], "delta_bias": inp["delta_bias"], "delta_softplus": True, "return_last_state": True}
    full, last = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], z=inp["z"], **kw)
    h, outs = None, []
    for s, e in ((0, split), (split, 30)):
        piece = {k: inp[k][..., s:e] for k in ("u", "delta", "B", "C", "z")}
        out, h = selective_scan(piece["u"], piece["delta"], inp["A"], piece["B"], piece["C"], z=piece["z"],
                                initial_state=h, **kw)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, -1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, last, rtol=1e-12, atol=1e-12)


@needs_fused
def test_mamba_step_and_stream_equal_forward_on_fused_path(fused_on):
    torch.manual_seed(0)
    m = Mamba(16, d_state=8, d_conv=4).double()  # d_inner 32: two SIMD tiles
    x = torch.randn(3, 13, 16, dtype=F64)
    full = m(x)
    state, outs = m.allocate_state(3), []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t:t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-12)
    state, outs = None, []
    for a, b in ((0, 1), (1, 6), (6, 13)):
        y, state = m.stream(x[:, a:b], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-12)


@needs_fused
def test_env_var_forces_torch_and_both_paths_agree(monkeypatch, fused_on):
    m = Mamba(16, d_state=8)
    x = torch.randn(2, 17, 16)
    fast = m(x)
    assert cpu_scan_status().startswith("fused C")
    monkeypatch.setenv(fused.SCAN_ENV, "torch")
    assert not fused.fused_available()
    assert cpu_scan_status() == "pytorch (HMRMAMBA_SCAN=torch)"
    torch.testing.assert_close(m(x), fast, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- channels-last layout (what Mamba runs)


def _channels_last_scan(u, delta, A, B, C, **kw):
    """scan_channels_last behind selective_scan's (B, D, L) signature: the inputs are re-laid out as
    channels-last copies (not views), and the output is transposed back."""
    def cl(t):
        return None if t is None else t.transpose(1, 2).contiguous()

    z = kw.pop("z", None)
    res = scan_channels_last(cl(u), cl(delta), A, cl(B), cl(C), z=cl(z), **kw)
    if kw.get("return_last_state"):
        return res[0].transpose(1, 2), res[1]
    return res.transpose(1, 2)


@needs_fused
@pytest.mark.parametrize("d,L,use_h0", [(6, 7, True), (32, 19, False), (40, 33, True), (16, 1, True)])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_channels_last_equals_channels_first_bit_for_bit(d, L, use_h0, dtype, fused_on):
    # d=40: two full SIMD tiles and 8 channels on the row kernels; the same arithmetic in either layout
    inp = make_inputs(d=d, L=L, n=8, dtype=dtype)
    first = outputs_and_grads(selective_scan, inp, use_h0=use_h0)
    last = outputs_and_grads(_channels_last_scan, inp, use_h0=use_h0)
    assert_same(first, last, rtol=0, atol=0)


@needs_fused
def test_channels_last_matches_reference_and_the_pytorch_fallback(monkeypatch, fused_on):
    inp = make_inputs(d=24, L=11, n=4)
    fast = outputs_and_grads(_channels_last_scan, inp)
    assert_same(fast, outputs_and_grads(selective_scan_ref, inp))
    monkeypatch.setenv(fused.SCAN_ENV, "torch")
    assert_same(fast, outputs_and_grads(_channels_last_scan, inp))


def test_channels_last_rejects_a_flat_input():
    with pytest.raises(InputError, match="u.*batch, seqlen, channels"):
        scan_channels_last(torch.zeros(4, 6), torch.zeros(4, 6), torch.zeros(6, 2), torch.zeros(1, 4, 2),
                           torch.zeros(1, 4, 2))


@pytest.mark.parametrize("bias", [True, False])
def test_mamba_conv_equals_torch_conv1d(bias):
    torch.manual_seed(1)
    m = Mamba(8, d_conv=4, conv_bias=bias).double()
    x = torch.randn(2, 9, m.d_inner, dtype=F64)  # (B, L, d_inner)
    padded = torch.nn.functional.pad(x, (0, 0, m.d_conv - 1, 0))
    want = torch.nn.functional.conv1d(x.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1,
                                      groups=m.d_inner)[..., :9]
    torch.testing.assert_close(m._conv(padded), torch.nn.functional.silu(want).transpose(1, 2),
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- errors and the build


def _with(t: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


BAD_INPUTS = {
    "delta": lambda i: {"delta": i["delta"][..., :4]},
    "A": lambda i: {"A": i["A"][:3]},
    "B": lambda i: {"B": i["B"][:, :2]},
    "C groups": lambda i: {"C": torch.zeros(2, 4, 4, 5, dtype=F64)},
    "initial_state": lambda i: {"initial_state": torch.zeros(2, 6, 3, dtype=F64)},
    "D": lambda i: {"D": torch.ones(5, dtype=F64)},
    "u dim": lambda i: {"u": i["u"][0]},
    "z": lambda i: {"z": i["z"][..., :3]},
    "nan": lambda i: {"u": _with(i["u"], (0, 1, 2), float("nan"))},
    "inf": lambda i: {"B": _with(i["B"], (1, 0, 3), float("inf"))},
}


#: (scan, bad input): the fused path in both layouts; channels last has no 2-D u nor B/C groups to get wrong
ERROR_CASES = [(selective_scan, c) for c in sorted(BAD_INPUTS)] + [
    (_channels_last_scan, c) for c in sorted(BAD_INPUTS) if c not in ("u dim", "C groups")]


@needs_fused
@pytest.mark.parametrize(("scan", "case"), ERROR_CASES,
                         ids=[f"{'last' if f is _channels_last_scan else 'first'}-{c}" for f, c in ERROR_CASES])
def test_fused_path_raises_the_same_input_error_as_reference(scan, case, fused_on):
    inp = {k: v.detach() for k, v in make_inputs(L=5).items()}
    base = {"u": inp["u"], "delta": inp["delta"], "A": inp["A"], "B": inp["B"], "C": inp["C"]}
    args = {**base, **BAD_INPUTS[case](inp)}
    messages = []
    for fn in (scan, selective_scan_ref):
        with pytest.raises(InputError) as err:
            fn(**args)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "\n" not in messages[0]


#: a value that makes one input non-finite: NaN and +Inf anywhere, and -Inf where it can give finite outputs
#: (A = -Inf decays the state to 0; delta + bias = -Inf gives dt = softplus(-Inf) = 0), which the kernel
#: must catch by reading that input itself
NONFINITE = [("u", float("nan"), (1, 3, 2)), ("u", float("inf"), (0, 0, 0)), ("delta", float("-inf"), (1, 2, 4)),
             ("delta", float("nan"), (0, 5, 6)), ("A", float("-inf"), (2, 1)), ("A", float("nan"), (0, 0)),
             ("B", float("inf"), (1, 0, 3)), ("C", float("-inf"), (0, 3, 6)), ("D", float("nan"), (4,)),
             ("z", float("-inf"), (1, 1, 1)), ("delta_bias", float("-inf"), (3,)),
             ("initial_state", float("inf"), (1, 2, 0))]


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("dim", [6, 32], ids=["rows", "tiles"])
@pytest.mark.parametrize("scan", [selective_scan, _channels_last_scan], ids=["first", "last"])
@pytest.mark.parametrize(("name", "value", "index"), NONFINITE,
                         ids=[f"{n}={v}" for n, v, _ in NONFINITE])
def test_kernel_names_a_non_finite_input_as_the_reference_does(scan, dim, dtype, name, value, index, fused_on):
    """The fused paths check values inside the kernel instead of a pass per input before it: each NaN/Inf
    still gets the reference's one-line error naming the input, in the tile kernels (16 channels) and the
    one-channel rows, in both layouts and precisions."""
    inp = {k: v.detach().to(dtype) for k, v in make_inputs(d=dim, L=7, n=4, seed=3).items()}
    inp[name] = _with(inp[name], index, value)
    kw = {k: inp[k] for k in ("D", "z", "delta_bias", "initial_state")}
    messages = []
    for fn in (scan, selective_scan_ref):
        with pytest.raises(InputError) as err:
            fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kw, delta_softplus=True)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and f"'{name}'" in messages[0]


@needs_fused
@pytest.mark.parametrize("scan", [selective_scan, _channels_last_scan], ids=["first", "last"])
def test_finite_inputs_that_overflow_return_like_the_reference(scan, fused_on):
    """Finite float32 inputs whose output overflows are not an input error: the kernel reports the Inf, the
    inputs check clean, and the outputs come back as the reference's (Inf where it has Inf)."""
    inp = {k: v.detach().float() for k, v in make_inputs(d=32, L=7, n=4, seed=4).items()}
    inp["D"] = torch.full_like(inp["D"], 3e38)
    inp["u"] = inp["u"].abs() * 10  # D * u overflows float32 everywhere
    kw = {k: inp[k] for k in ("D", "z", "delta_bias")}
    got = scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kw, delta_softplus=True)
    want = selective_scan_ref(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kw, delta_softplus=True)
    assert torch.isinf(want).float().mean() > 0.5
    # the same Inf pattern but where an output lies at the edge of the float32 range (rounding decides)
    assert (torch.isinf(got) == torch.isinf(want)).float().mean() > 0.95
    both = torch.isfinite(got) & torch.isfinite(want)
    assert torch.allclose(got[both], want[both], rtol=1e-3)


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv(fused.SCAN_ENV, raising=False)
    monkeypatch.setenv("HMRMAMBA_CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    inp = make_inputs(b=2, d=16, L=9, n=4, seed=1)
    with caplog.at_level(logging.WARNING, logger="hmrmamba.ssm.fused"):
        a = outputs_and_grads(selective_scan, inp)
        b = outputs_and_grads(selective_scan, inp)
    warnings = [r for r in caplog.records if r.name == "hmrmamba.ssm.fused"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "no-such-cc" in warnings[0].getMessage()
    assert not fused.fused_available()
    assert cpu_scan_status().startswith("pytorch (build failed")
    assert_same(a, outputs_and_grads(selective_scan_ref, inp), rtol=1e-9, atol=1e-9)
    assert_same(a, b)
    assert not (tmp_path / "cache" / "hmrmamba").exists() or not any((tmp_path / "cache" / "hmrmamba").iterdir())


def test_failing_compiler_reports_one_line(monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fakecc 1.0; exit 0; fi\n"
                    "echo 'x.c:1: error: broken' >&2\necho 'second line' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HMRMAMBA_CC", str(fake))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = build.build_library()
    assert res.path is None and res.action == "failed"
    assert "error: broken" in res.detail and "\n" not in res.detail
    assert not [p for p in (tmp_path / "cache" / "hmrmamba").iterdir()]  # no temporary files left


@pytest.mark.slow  # compiles the library from scratch
@needs_fused
def test_build_is_cached_per_source_and_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = build.build_library()
    assert first.action == "built" and first.path.parent == tmp_path / "hmrmamba"
    second = build.build_library()
    assert second.action == "cached" and second.path == first.path
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # written atomically, no temp left
    assert build.main() == 0


def test_importing_the_package_compiles_nothing(tmp_path):
    import subprocess
    import sys

    code = ("import hmrmamba.ssm, hmrmamba.ssm.scan, hmrmamba.ssm.fused as f; "
            "assert f.load_library.cache_info().currsize == 0")
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert not (tmp_path / "hmrmamba").exists()
