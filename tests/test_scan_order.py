"""The dual scan's kinematic (local) order and its direction: the tree walk, the merge of revisited
joints, bidirectional branches, and configs saved before these options existed."""

from __future__ import annotations

import pytest
import torch

from hmrmamba import skeleton as S
from hmrmamba.errors import InputError
from hmrmamba.models import DualScanMambaBlock, GeometryAwareLifter, ScanLayout, build_from_config, resolve_config
from hmrmamba.ssm import Mamba

J = 17
WALK = S.H36M17.tree_walk


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def steps_are_bones_or_returns(js: S.JointSet, walk: tuple[int, ...]) -> list[tuple[int, int]]:
    """The consecutive pairs of ``walk`` that are neither a bone nor a return step (a leaf back to an
    already visited joint that is the parent of the next joint)."""
    bad = []
    for i, (a, b) in enumerate(zip(walk, walk[1:])):
        if js.parents[b] == a or js.parents[a] == b:
            continue
        is_return = (not js.children[a] and b in walk[:i + 1] and i + 2 < len(walk)
                     and js.parents[walk[i + 2]] == b)
        if not is_return:
            bad.append((a, b))
    return bad


# ----------------------------------------------------------------------------------------------
# the order


def test_h36m_tree_walk_is_the_documented_one():
    names = [S.H36M17.names[j] for j in WALK]
    assert names == ["pelvis", "right_hip", "right_knee", "right_ankle",
                     "pelvis", "left_hip", "left_knee", "left_ankle",
                     "pelvis", "spine", "thorax", "neck", "head",
                     "thorax", "left_shoulder", "left_elbow", "left_wrist",
                     "thorax", "right_shoulder", "right_elbow", "right_wrist"]


@pytest.mark.parametrize("name", sorted(S.JOINT_SETS))
def test_tree_walk_visits_every_joint_along_bones(name):
    js = S.get_joint_set(name)
    walk = js.tree_walk
    assert sorted(set(walk)) == list(range(js.num_joints))
    leaves = sum(1 for c in js.children if not c)
    assert len(walk) == js.num_joints + leaves - 1  # one return step per further chain
    assert walk[0] == js.root
    assert steps_are_bones_or_returns(js, walk) == []
    # only branching joints are revisited, once per further child
    for j in range(js.num_joints):
        assert walk.count(j) == max(1, len(js.children[j]))


def test_the_checker_rejects_the_first_versions_jumps():
    """The 'limbs' permutation jumps ankle -> spine, head -> wrist, shoulder -> shoulder: not bones,
    not return steps (so the check above can fail)."""
    js = S.H36M17
    bad = steps_are_bones_or_returns(js, js.scan_order)
    assert (js.index("left_ankle"), js.index("spine")) in bad
    assert (js.index("head"), js.index("left_wrist")) in bad
    assert (js.index("left_shoulder"), js.index("right_shoulder")) in bad


def test_arms_pass_through_the_thorax():
    js = S.H36M17
    thorax = js.index("thorax")
    for side in ("left", "right"):
        shoulder, elbow, wrist = (js.index(f"{side}_{p}") for p in ("shoulder", "elbow", "wrist"))
        i = WALK.index(shoulder)
        assert WALK[i - 1:i + 3] == (thorax, shoulder, elbow, wrist)
    spine = WALK.index(js.index("spine"))
    assert WALK[spine + 1] == thorax
    # the first version's order never steps from the thorax into an arm
    old = js.scan_order
    assert all(not (a == thorax and b in (js.index("left_shoulder"), js.index("right_shoulder")))
               for a, b in zip(old, old[1:]))


def test_kinematic_scan_names():
    assert S.kinematic_scan(S.H36M17, "tree") == WALK
    assert S.kinematic_scan(S.H36M17, "limbs") == S.H36M17.scan_order
    with pytest.raises(InputError, match="unknown kinematic scan 'dfs'.*tree"):
        S.kinematic_scan(S.H36M17, "dfs")


# ----------------------------------------------------------------------------------------------
# the layout: revisits in, averages out


@pytest.mark.parametrize("axis,time_major", [("spatial", False), ("temporal", False), ("temporal", True)])
def test_walk_layout_round_trip_is_exact(axis, time_major):
    x = torch.randn(2, 5, J, 3)
    layout = ScanLayout(axis, WALK, time_major=time_major)
    assert layout.revisits and layout.num_joints == J and layout.inverse is None
    seq = layout.to_seq(x)
    assert seq.shape[1] == (len(WALK) if axis == "spatial" else len(WALK) * 5)
    back = layout.from_seq(seq, x.shape)
    once = [j for j in range(J) if WALK.count(j) == 1]
    assert torch.equal(back[:, :, once], x[:, :, once])  # joints visited once: moved, not computed
    assert torch.allclose(back, x, rtol=1e-6, atol=0)  # pelvis, thorax: (x + x + x) / 3, one rounding


def test_walk_layout_reads_the_walk():
    x = torch.randn(2, 5, J, 3)
    spatial = ScanLayout("spatial", WALK).to_seq(x).view(2, 5, len(WALK), 3)
    chain = ScanLayout("temporal", WALK).to_seq(x)  # (B, L*T, C)
    for k, joint in enumerate(WALK):
        assert torch.equal(spatial[:, :, k], x[:, :, joint])
        assert torch.equal(chain[:, k * 5:(k + 1) * 5], x[:, :, joint])


def test_revisited_tokens_are_averaged_known_answer():
    layout = ScanLayout("spatial", WALK)
    pelvis, thorax, head = 0, 8, 10
    seq = torch.zeros(1, len(WALK), 1)
    pos = {j: [k for k, w in enumerate(WALK) if w == j] for j in (pelvis, thorax, head)}
    assert len(pos[pelvis]) == 3 and len(pos[thorax]) == 3 and len(pos[head]) == 1
    seq[0, pos[pelvis], 0] = torch.tensor([1.0, 2.0, 6.0])
    seq[0, pos[thorax], 0] = torch.tensor([-3.0, 0.0, 6.0])
    seq[0, pos[head], 0] = 7.0
    out = layout.from_seq(seq, (1, 1, J, 1))[0, 0, :, 0]
    assert out[pelvis].item() == 3.0 and out[thorax].item() == 1.0 and out[head].item() == 7.0
    assert out[1].item() == 0.0


def test_layout_rejects_orders_that_miss_joints():
    with pytest.raises(ValueError, match="misses joints"):
        ScanLayout("spatial", (0, 2, 0))
    with pytest.raises(ValueError, match="J = 17"):
        ScanLayout("spatial", WALK).to_seq(torch.zeros(1, 1, 21, 2))


# ----------------------------------------------------------------------------------------------
# the block: the walk and the reversed branches


def block(axis="spatial", *, order=WALK, bidirectional=False, dim=8, causal=False):
    return DualScanMambaBlock(dim, axis=axis, kinematic_order=order, d_state=4, mlp_ratio=2.0, backend="torch",
                              bidirectional=bidirectional, causal=causal).eval()


def test_one_way_local_branch_is_causal_along_the_walk():
    blk = block()
    h = torch.randn(1, 2, J, 8)
    joint = S.H36M17.index("left_shoulder")
    p = WALK.index(joint)
    h2 = h.clone()
    h2[:, :, joint] += 1.0
    a, b = blk.local_branch(h), blk.local_branch(h2)
    for j in range(J):  # a joint changes iff one of its visits comes at or after the change
        changed = not torch.allclose(a[:, :, j], b[:, :, j])
        assert changed == (max(k for k, w in enumerate(WALK) if w == j) >= p), S.H36M17.names[j]


def test_both_ways_local_branch_reaches_back():
    blk = block(bidirectional=True)
    h = torch.randn(1, 2, J, 8)
    h2 = h.clone()
    h2[:, :, S.H36M17.index("right_wrist")] += 1.0  # the walk's last token
    a, b = blk.local_branch(h), blk.local_branch(h2)
    assert all(not torch.allclose(a[:, :, j], b[:, :, j]) for j in range(J))


def test_reversed_scan_really_reverses():
    f, r = Mamba(8, d_state=4, backend="torch"), Mamba(8, d_state=4, backend="torch")
    seq = torch.randn(3, 11, 8)
    both = DualScanMambaBlock.scan_sequence
    # reversing the input swaps the roles of the two Mambas
    assert torch.allclose(both(seq.flip(1), f, r), both(seq, r, f).flip(1), atol=1e-6)
    # symmetric setup (the same Mamba both ways): reversal-equivariant; one-way is not
    assert torch.allclose(both(seq.flip(1), f, f), both(seq, f, f).flip(1), atol=1e-6)
    assert not torch.allclose(both(seq.flip(1), f, None), both(seq, f, None).flip(1), atol=1e-3)
    assert torch.equal(both(seq, f, None), f(seq))


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_both_ways_differs_from_one_way_with_the_same_forward_weights(axis):
    two = block(axis, bidirectional=True)
    one = block(axis)
    missing, unexpected = one.load_state_dict(two.state_dict(), strict=False)
    assert missing == [] and all("_rev." in k for k in unexpected) and unexpected
    x = torch.randn(2, 4, J, 8)
    assert not torch.allclose(one(x), two(x), atol=1e-4)
    # and the difference is the reversed Mambas: copying the forward ones makes the spatial global
    # branch reversal-symmetric, which one-way is not
    if axis == "spatial":
        two.global_mamba_rev.load_state_dict(two.global_mamba.state_dict())
        seq = torch.randn(4, J, 8)
        both = DualScanMambaBlock.scan_sequence
        assert torch.allclose(both(seq.flip(1), two.global_mamba, two.global_mamba_rev),
                              both(seq, two.global_mamba, two.global_mamba_rev).flip(1), atol=1e-6)


def test_reversed_temporal_scan_is_refused_when_causal():
    with pytest.raises(InputError, match="future frames"):
        block("temporal", bidirectional=True, causal=True)
    with pytest.raises(InputError, match="scan='dual'"):
        DualScanMambaBlock(8, axis="spatial", scan="bi", kinematic_order=WALK, bidirectional=True)


def test_causal_lifter_with_the_walk_and_two_way_spatial_blocks_streams_exactly():
    lifter = GeometryAwareLifter(dim=16, depth=1, ga_heads=2, ga_points=2, d_state=4, feat_dim=12, max_frames=8,
                                 drop_path=0.0, mlp_ratio=2.0, backend="torch", causal=True,
                                 kinematic_scan="tree", bidirectional=True).eval()
    assert lifter.spatial_blocks[0].bidirectional and not lifter.temporal_blocks[0].bidirectional
    kp, conf, feats = torch.rand(1, 6, J, 2) * 2 - 1, torch.rand(1, 6, J), torch.randn(1, 6, 12)
    with torch.no_grad():
        whole = lifter(kp, conf, feats)
        state, outs = lifter.init_state(1), []
        for t in range(6):
            y, state = lifter.step(kp[:, t:t + 1], conf[:, t:t + 1], feats[:, t:t + 1], state)
            outs.append(y)
    assert torch.allclose(torch.cat(outs, 1), whole, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# configs: the variant table's choice, and configs saved before the options existed


def test_variants_use_the_tree_walk_and_old_configs_rebuild_the_old_model():
    cfg = resolve_config("tiny", map_dim=0)
    assert cfg["lifter"]["kinematic_scan"] == "tree" and "bidirectional" in cfg["lifter"]
    new = build_from_config(cfg, lift_only=True)
    assert new.lifter.spatial_blocks[0].local_layout.order == WALK
    old_cfg = {**cfg, "lifter": {k: v for k, v in cfg["lifter"].items() if k not in ("kinematic_scan", "bidirectional")}}
    old = build_from_config(old_cfg, lift_only=True)
    for blk in (*old.lifter.spatial_blocks, *old.lifter.temporal_blocks):
        assert blk.local_layout.order == S.H36M17.scan_order and not blk.bidirectional
    # a first-version checkpoint (its state dict) loads into the rebuilt model key for key
    first = build_from_config({**old_cfg, "lifter": {**old_cfg["lifter"], "kinematic_scan": "limbs",
                                                     "bidirectional": False}}, lift_only=True)
    old.load_state_dict(first.state_dict(), strict=True)


def test_two_way_adds_exactly_the_reversed_mambas():
    cfg = resolve_config("tiny", map_dim=0, bidirectional=False)
    one = build_from_config(cfg, lift_only=True)
    two = build_from_config({**cfg, "lifter": {**cfg["lifter"], "bidirectional": True}}, lift_only=True)
    extra = {k for k in two.state_dict()} - {k for k in one.state_dict()}
    assert extra and all(".global_mamba_rev." in k or ".local_mamba_rev." in k for k in extra)
    per_mamba = sum(p.numel() for p in one.lifter.spatial_blocks[0].local_mamba.parameters())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(two) - n(one) == 4 * per_mamba  # depth 1: a spatial and a temporal block, two branches each
