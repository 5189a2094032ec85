import numpy as np
import pytest
import torch

from hmrmamba import skeleton as S
from hmrmamba.errors import InputError


@pytest.mark.parametrize("name", sorted(S.JOINT_SETS))
def test_tables_are_consistent(name):
    js = S.get_joint_set(name)
    js.validate()
    assert len(js.bones) == js.num_joints - 1


@pytest.mark.parametrize("name", sorted(S.JOINT_SETS))
def test_scan_order_maps_invert_exactly(name):
    js = S.get_joint_set(name)
    x = torch.randn(2, 5, js.num_joints, 8)
    y = S.to_scan_order(x, js)
    assert not torch.equal(y, x)  # the local scan is a different order from the global one
    assert torch.equal(S.from_scan_order(y, js), x)
    assert torch.equal(S.to_scan_order(S.from_scan_order(x, js), js), x)


def test_h36m_scan_walks_along_bones():
    js = S.H36M17
    order = js.scan_order
    linked = sum(1 for a, b in zip(order, order[1:]) if js.parents[a] == b or js.parents[b] == a)
    assert linked >= 13  # 16 steps; only the jumps between chains are not bones


def test_flip_swaps_named_sides():
    for js in S.JOINT_SETS.values():
        for i, n in enumerate(js.names):
            other = js.names[js.flip[i]]
            if n.startswith("left_"):
                assert other == "right_" + n[5:]
            elif n.startswith("right_"):
                assert other == "left_" + n[6:]
            else:
                assert other == n
    x = np.arange(17 * 2).reshape(17, 2)
    assert np.array_equal(S.flip_joints(S.flip_joints(x, S.H36M17), S.H36M17), x)


def test_mpi_to_h36m_mapping_names():
    mpi = S.MPI_INF_3DHP17
    mapped = [mpi.names[i] for i in S.MPI_TO_H36M]
    assert mapped[0] == "pelvis" and mapped[1] == "right_hip" and mapped[13] == "left_wrist"
    assert mapped[10] == "head_top"


def test_parents_match_design():
    assert S.H36M17.parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
    assert S.SMPL24.parents[1:] == (0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


def test_unknown_joint_set_is_a_clear_error():
    with pytest.raises(InputError, match="unknown joint set 'h36m18'.*h36m17"):
        S.get_joint_set("h36m18")
