"""Tests of hmrmamba.ssm: the selective scan against a naive recurrence, its streaming state,
the Mamba block's recurrent forms, mamba_ssm compatibility and input checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import hmrmamba.ssm.scan as scan_mod
from hmrmamba.errors import InputError
from hmrmamba.ssm import (
    BackendUnavailableError,
    BiMamba,
    Mamba,
    MambaState,
    mamba_ssm_available,
    resolve_backend,
    scan_with_backend,
    selective_scan,
    selective_scan_ref,
)

F64 = torch.float64


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Eq. 1-3 written out one time step at a time. u, delta: (b, d, L) -> out (b, d, L), h_L (b, d, n)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    b, d, L = u.shape
    n = A.shape[1]
    if B.dim() == 4:  # (b, g, n, L): channel c reads group c // (d / g)
        B = B.repeat_interleave(d // B.shape[1], dim=1)
    else:
        B = B[:, None].expand(b, d, n, L)
    if C.dim() == 4:
        C = C.repeat_interleave(d // C.shape[1], dim=1)
    else:
        C = C[:, None].expand(b, d, n, L)
    h = torch.zeros(b, d, n, dtype=u.dtype) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]  # (b, d, 1)
        A_bar = torch.exp(dt * A)  # zero-order hold
        B_bar_u = dt * B[:, :, :, t] * u[:, :, t, None]
        h = A_bar * h + B_bar_u
        y = (h * C[:, :, :, t]).sum(-1)
        if D is not None:
            y = y + D * u[:, :, t]
        if z is not None:
            y = y * z[:, :, t] * torch.sigmoid(z[:, :, t])
        ys.append(y)
    return torch.stack(ys, dim=-1), h


def make_inputs(b=2, d=6, L=7, n=4, groups=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    bc_shape = (b, n, L) if groups is None else (b, groups, n, L)
    return {
        "u": r(b, d, L),
        "delta": r(b, d, L, scale=0.5),
        "A": (-torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1).requires_grad_(),
        "B": r(*bc_shape), "C": r(*bc_shape),
        "D": r(d), "z": r(b, d, L), "delta_bias": r(d, scale=0.3),
        "initial_state": r(b, d, n),
    }


GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def _outputs_and_grads(fn, inp, use_h0: bool):
    kwargs = {"D": inp["D"], "z": inp["z"], "delta_bias": inp["delta_bias"], "delta_softplus": True}
    names = [k for k in GRAD_NAMES if use_h0 or k != "initial_state"]
    if fn is naive_scan:
        out, last = naive_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kwargs,
                               initial_state=inp["initial_state"] if use_h0 else None)
    else:
        out, last = fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kwargs, return_last_state=True,
                       initial_state=inp["initial_state"] if use_h0 else None)
    # fixed, non-uniform cotangents for the output and the last state
    w_out = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    w_last = torch.linspace(0.5, -1, last.numel(), dtype=last.dtype).view_as(last)
    loss = (out * w_out).sum() + (last * w_last).sum()
    grads = torch.autograd.grad(loss, [inp[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("L", [1, 7, 16, 17, 64, 243])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("use_h0", [False, True])
def test_scan_matches_naive_outputs_and_grads(L, groups, use_h0):
    inp = make_inputs(L=L, groups=groups, seed=L)
    out_ref, last_ref, g_ref = _outputs_and_grads(naive_scan, inp, use_h0)
    out, last, g = _outputs_and_grads(selective_scan, inp, use_h0)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("block", [1, 3, 5, 64])
def test_scan_block_size_does_not_change_result(block, monkeypatch):
    inp = make_inputs(L=23, groups=3, seed=1)
    out_ref, last_ref, g_ref = _outputs_and_grads(naive_scan, inp, True)
    monkeypatch.setattr(scan_mod, "DEFAULT_BLOCK", block)
    out, last, g = _outputs_and_grads(selective_scan, inp, True)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_scan_without_optional_inputs_and_gradcheck():
    inp = make_inputs(b=1, d=2, L=5, n=2, seed=3)
    args = (inp["u"], inp["delta"].detach().abs().requires_grad_(), inp["A"], inp["B"], inp["C"])
    out = selective_scan(*args)
    ref, _ = naive_scan(*args)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, return_last_state=True), args)


@pytest.mark.parametrize("L", [7, 40])
def test_reference_scan_matches_naive(L):
    inp = make_inputs(L=L, groups=2, seed=5)
    out_ref, last_ref, g_ref = _outputs_and_grads(naive_scan, inp, True)
    out, last, g = _outputs_and_grads(selective_scan_ref, inp, True)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(last, last_ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], msg=f"gradient of {name}")


@pytest.mark.parametrize("split", [1, 9, 16, 29])
def test_scan_in_two_pieces_equals_one_scan(split):
    inp = make_inputs(L=30, seed=7)
    kw = {"D": inp["D"], "z": inp["z"], "delta_bias": inp["delta_bias"], "delta_softplus": True}
    full, last = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kw,
                                return_last_state=True)
    parts = {}
    for name in ("u", "delta", "B", "C", "z"):
        parts[name] = (inp[name][..., :split], inp[name][..., split:])
    first = {k: v[0] for k, v in parts.items()}
    second = {k: v[1] for k, v in parts.items()}
    common = {"A": inp["A"], "D": inp["D"], "delta_bias": inp["delta_bias"], "delta_softplus": True,
              "return_last_state": True}
    out1, h1 = selective_scan(**first, **common)
    out2, h2 = selective_scan(**second, **common, initial_state=h1)
    torch.testing.assert_close(torch.cat([out1, out2], dim=-1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, last, rtol=1e-12, atol=1e-12)


def test_float32_close_to_float64_and_dtype_kept():
    inp = make_inputs(b=3, d=8, L=50, n=16, seed=11)
    args64 = [inp[k].detach() for k in ("u", "delta", "A", "B", "C")]
    out64 = selective_scan(*args64, delta_softplus=True)
    out32 = selective_scan(*[a.float() for a in args64], delta_softplus=True)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)
    out16 = selective_scan(*[a.bfloat16() for a in args64[:2]], *[a.float() for a in args64[2:3]],
                           *[a.bfloat16() for a in args64[3:]], delta_softplus=True)
    assert out16.dtype == torch.bfloat16


def test_strong_decay_stays_finite():
    """delta * A down to -2000: exp underflows to 0 but nothing overflows, and h_t forgets h_{t-1}."""
    inp = make_inputs(b=1, d=4, L=20, n=16, seed=2, dtype=torch.float32)
    A = -torch.arange(1, 17, dtype=torch.float32).repeat(4, 1)
    delta = torch.full((1, 4, 20), 120.0, requires_grad=True)
    u = inp["u"].detach().requires_grad_()
    out, last = selective_scan(u, delta, A, inp["B"], inp["C"], return_last_state=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(delta.grad).all() and torch.isfinite(u.grad).all()
    # with full decay the state is just the last input term delta * B * u
    expected = 120.0 * inp["B"][0, :, -1].detach() * u[0, :, -1, None].detach()
    torch.testing.assert_close(last[0], expected)


def test_scan_rejects_bad_shapes_and_nans():
    inp = {k: v.detach() for k, v in make_inputs(L=5).items()}
    base = {"u": inp["u"], "delta": inp["delta"], "A": inp["A"], "B": inp["B"], "C": inp["C"]}
    with pytest.raises(ValueError, match=r"delta.*\(batch, dim, seqlen\)"):
        selective_scan(**{**base, "delta": inp["delta"][..., :4]})
    with pytest.raises(InputError, match=r"'A'.*\(dim, dstate\)"):
        selective_scan(**{**base, "A": inp["A"][:3]})
    with pytest.raises(InputError, match=r"'B'.*\(batch, dstate, seqlen\)"):
        selective_scan(**{**base, "B": inp["B"][:, :2]})
    with pytest.raises(InputError, match=r"'C'.*divisible by groups"):
        selective_scan(**{**base, "C": torch.zeros(2, 4, 4, 5, dtype=F64)})  # d=6 not divisible by 4
    with pytest.raises(InputError, match=r"'u'.*\(batch, dim, seqlen\)"):
        selective_scan(**{**base, "u": inp["u"][0]})
    with pytest.raises(InputError, match=r"initial_state.*\(batch, dim, dstate\)"):
        selective_scan(**base, initial_state=torch.zeros(2, 6, 3, dtype=F64))
    with pytest.raises(InputError, match=r"'D'.*\(dim,\)"):
        selective_scan(**base, D=torch.ones(5, dtype=F64))
    bad = inp["u"].clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(InputError, match=r"'u'.*NaN"):
        selective_scan(**{**base, "u": bad})


# ---------------------------------------------------------------- Mamba block

def _mamba(d_model=16, seed=0, **kw) -> Mamba:
    torch.manual_seed(seed)
    return Mamba(d_model, **kw).double()


def test_mamba_forward_equals_recurrent_step():
    m = _mamba(d_model=16, d_state=8, d_conv=4)
    x = torch.randn(3, 13, 16, dtype=F64)
    full = m(x)
    state = m.allocate_state(3)
    outs = []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t:t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-12)


def test_mamba_stream_chunks_equal_full_forward_and_step():
    m = _mamba(d_model=16, d_conv=3)
    x = torch.randn(2, 20, 16, dtype=F64)
    full = m(x)
    state, outs = None, []
    for a, b in [(0, 1), (1, 3), (3, 11), (11, 20)]:  # chunks shorter and longer than d_conv
        y, state = m.stream(x[:, a:b], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-12)
    # the streamed state continues correctly with step()
    y_next, _ = m.step(torch.ones(2, 1, 16, dtype=F64), state)
    full_next = m(torch.cat([x, torch.ones(2, 1, 16, dtype=F64)], dim=1))[:, -1:]
    torch.testing.assert_close(y_next, full_next, rtol=1e-10, atol=1e-12)


def test_mamba_state_dict_names_and_shapes_match_mamba_ssm():
    expected = [  # mamba_ssm.Mamba(d_model=256).state_dict(), in order
        ("A_log", (512, 16)), ("D", (512,)), ("in_proj.weight", (1024, 256)),
        ("conv1d.weight", (512, 1, 4)), ("conv1d.bias", (512,)), ("x_proj.weight", (48, 512)),
        ("dt_proj.weight", (512, 16)), ("dt_proj.bias", (512,)), ("out_proj.weight", (256, 512)),
    ]
    m = Mamba(256)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == expected
    # S4D-real init and the dt bias range
    torch.testing.assert_close(-torch.exp(m.A_log[0]), -torch.arange(1, 17, dtype=torch.float32))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.equal(m.D, torch.ones(512))
    m2 = Mamba(256)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 5, 256)
    torch.testing.assert_close(m2(x), m(x))


def test_mamba_is_causal_and_bimamba_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16, dtype=F64)
    x2 = x.clone()
    x2[:, 8] += 1.0  # change one future token
    m = _mamba()
    bi = BiMamba(16).double()
    past = slice(0, 8)
    torch.testing.assert_close(m(x)[:, past], m(x2)[:, past], rtol=0, atol=0)
    assert (bi(x)[:, past] - bi(x2)[:, past]).abs().max() > 1e-6
    assert (m(x)[:, 8:] - m(x2)[:, 8:]).abs().max() > 1e-6


def test_bimamba_merge_and_flip():
    torch.manual_seed(1)
    bi_sum = BiMamba(8, merge="sum").double()
    bi_mean = BiMamba(8, merge="mean").double()
    bi_mean.load_state_dict(bi_sum.state_dict())
    x = torch.randn(2, 6, 8, dtype=F64)
    expected = bi_sum.mamba_fwd(x) + bi_sum.mamba_bwd(x.flip(1)).flip(1)
    torch.testing.assert_close(bi_sum(x), expected)
    torch.testing.assert_close(bi_mean(x), expected / 2)
    uni = BiMamba(8, bidirectional=False)
    assert uni.mamba_bwd is None
    assert set(uni.state_dict()) == {f"mamba_fwd.{k}" for k in Mamba(8).state_dict()}


def test_mamba_gradients_reach_every_parameter():
    m = Mamba(16)
    x = torch.randn(2, 9, 16, requires_grad=True)
    m(x).pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_mamba_rejects_bad_input():
    m = Mamba(16)
    with pytest.raises(InputError, match=r"\(batch, seqlen, 16\)"):
        m(torch.randn(2, 5, 15))
    with pytest.raises(InputError, match=r"\(batch, 1, 16\)"):
        m.step(torch.randn(2, 3, 16), m.allocate_state(2))
    with pytest.raises(InputError, match=r"state.ssm"):
        m.step(torch.randn(2, 1, 16), MambaState(conv=torch.zeros(2, 32, 4), ssm=torch.zeros(2, 32, 3)))
    x = torch.randn(2, 5, 16)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(x)
    with pytest.raises(InputError, match="backend"):
        Mamba(16, backend="cuda")


# ---------------------------------------------------------------- backends

def test_backend_resolution_on_cpu():
    x = torch.zeros(1)
    assert resolve_backend("torch", x) == "torch"
    assert resolve_backend("auto", x) == "torch"  # CPU tensors never use the CUDA kernel
    if not mamba_ssm_available():
        with pytest.raises(BackendUnavailableError, match="mamba_ssm"):
            resolve_backend("mamba_ssm", x)
    inp = {k: v.detach() for k, v in make_inputs(L=6).items()}
    out = scan_with_backend(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], backend="torch")
    torch.testing.assert_close(out, naive_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"])[0])


def test_importing_ssm_does_not_import_mamba_ssm():
    code = "import sys, hmrmamba.ssm; m = hmrmamba.ssm.Mamba(8); assert 'mamba_ssm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()),
                    reason="needs CUDA and mamba_ssm")
def test_parity_with_mamba_ssm_on_cuda():
    from mamba_ssm import Mamba as RefMamba

    torch.manual_seed(0)
    ref = RefMamba(d_model=64).cuda()
    ours = Mamba(64, backend="torch").cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 37, 64, device="cuda")
    torch.testing.assert_close(ours(x), ref(x), rtol=2e-3, atol=2e-3)
    fused = Mamba(64, backend="mamba_ssm").cuda()
    fused.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fused(x), ours(x), rtol=2e-3, atol=2e-3)
    ref.load_state_dict(fused.state_dict())  # and back
