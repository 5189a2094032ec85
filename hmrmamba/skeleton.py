"""Joint sets, kinematic trees, left/right flips and kinematic scan orders.

Each joint set is a :class:`JointSet` with names, parents (``-1`` for the root) and the index
permutation that swaps left and right. The dual-scan Mamba block (paper eq. 10) scans tokens once in
index order (global scan) and once in a *kinematic* order (local scan), one of :data:`KINEMATIC_SCANS`:

- ``"tree"``: :attr:`JointSet.tree_walk`, a depth-first walk of the kinematic tree from the root,
  children in index order. A joint with several children is visited again before each further child
  (a *return step*: leaf -> that branching joint), so every chain is read from the joint it hangs
  from and every other step follows a bone. H36M-17 (21 tokens, pelvis and thorax three times each)::

      pelvis r_hip r_knee r_ankle | pelvis l_hip l_knee l_ankle | pelvis spine thorax neck head |
      thorax l_shoulder l_elbow l_wrist | thorax r_shoulder r_elbow r_wrist

  The outputs at a joint's visits are averaged back into one token (``ScanLayout.from_seq``).
- ``"limbs"``: :attr:`JointSet.scan_order`, the first version's permutation (each joint once, three
  jumps between chains, the arms never touch the thorax); kept so that checkpoints trained with it
  rebuild exactly. :func:`to_scan_order` and :func:`from_scan_order` move a tensor between it and
  index order and invert each other exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hmrmamba.errors import InputError


@dataclass(frozen=True)
class JointSet:
    """A named skeleton. All index tuples refer to positions in ``names``."""

    name: str
    names: tuple[str, ...]
    parents: tuple[int, ...]
    flip: tuple[int, ...]
    scan_order: tuple[int, ...]
    root: int = 0

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def bones(self) -> list[tuple[int, int]]:
        """(parent, child) pairs, one per non-root joint."""
        return [(p, c) for c, p in enumerate(self.parents) if p >= 0]

    @property
    def scan_inverse(self) -> tuple[int, ...]:
        """``inv`` such that ``x[..., scan_order, :][..., inv, :] == x``."""
        inv = np.empty(self.num_joints, dtype=np.int64)
        inv[list(self.scan_order)] = np.arange(self.num_joints)
        return tuple(int(i) for i in inv)

    @property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """``children[j]``: the joints whose parent is j, in index order."""
        return tuple(tuple(c for c, p in enumerate(self.parents) if p == j) for j in range(self.num_joints))

    @property
    def tree_walk(self) -> tuple[int, ...]:
        """Depth-first walk from the root, children in index order, a branching joint revisited
        before each of its further children: J + (leaves - 1) entries, every joint at least once."""
        children = self.children
        walk: list[int] = []

        def visit(j: int) -> None:
            walk.append(j)
            for k, c in enumerate(children[j]):
                if k:  # return step: back to the branching joint before its next chain
                    walk.append(j)
                visit(c)

        visit(self.root)
        return tuple(walk)

    def index(self, joint_name: str) -> int:
        try:
            return self.names.index(joint_name)
        except ValueError:
            raise InputError(f"unknown joint '{joint_name}'", field=self.name,
                             expected=f"one of {list(self.names)}") from None

    def validate(self) -> None:
        """Raise if the tables are inconsistent (used by the tests for every joint set)."""
        n = self.num_joints
        if len(self.parents) != n or len(self.flip) != n or len(self.scan_order) != n:
            raise ValueError(f"{self.name}: table lengths differ from {n} joints")
        if sorted(self.scan_order) != list(range(n)) or sorted(self.flip) != list(range(n)):
            raise ValueError(f"{self.name}: scan_order and flip must be permutations")
        if [c for c, p in enumerate(self.parents) if p < 0] != [self.root]:
            raise ValueError(f"{self.name}: exactly one root expected at {self.root}")
        for c in range(n):  # every joint reaches the root without a cycle
            seen, j = set(), c
            while j >= 0:
                if j in seen:
                    raise ValueError(f"{self.name}: cycle through joint {j}")
                seen.add(j)
                j = self.parents[j]
        if any(self.flip[self.flip[i]] != i for i in range(n)):
            raise ValueError(f"{self.name}: flip must be an involution")


H36M17 = JointSet(
    name="h36m17",
    names=("pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
           "left_ankle", "spine", "thorax", "neck", "head", "left_shoulder", "left_elbow",
           "left_wrist", "right_shoulder", "right_elbow", "right_wrist"),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    flip=(0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13),
    # "limbs" (first version): right foot -> pelvis -> left foot | spine -> head | left hand -> right hand
    scan_order=(3, 2, 1, 0, 4, 5, 6, 7, 8, 9, 10, 13, 12, 11, 14, 15, 16),
)

SMPL24 = JointSet(
    name="smpl24",
    names=("pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
           "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
           "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
           "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand"),
    parents=(-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21),
    flip=(0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22),
    # left toe -> pelvis -> right toe | spine -> head | left hand -> right hand
    scan_order=(10, 7, 4, 1, 0, 2, 5, 8, 11, 3, 6, 9, 12, 15,
                22, 20, 18, 16, 13, 14, 17, 19, 21, 23),
)

COCO17 = JointSet(
    name="coco17",
    names=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
           "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
           "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"),
    parents=(-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    flip=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    scan_order=(3, 1, 0, 2, 4, 9, 7, 5, 6, 8, 10, 15, 13, 11, 12, 14, 16),
)

MPI_INF_3DHP17 = JointSet(
    name="mpi-inf-3dhp-17",
    names=("head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
           "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
           "left_knee", "left_ankle", "pelvis", "spine", "head"),
    parents=(16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    flip=(0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 14, 15, 16),
    scan_order=(10, 9, 8, 14, 11, 12, 13, 15, 1, 16, 0, 7, 6, 5, 2, 3, 4),
    root=14,
)

JOINT_SETS: dict[str, JointSet] = {js.name: js for js in (H36M17, SMPL24, COCO17, MPI_INF_3DHP17)}

#: ``h36m[i] = mpi[MPI_TO_H36M[i]]``: the standard 3DHP -> H36M-17 re-ordering.
MPI_TO_H36M = (14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4)

#: H36M-17 evaluation joints of the PMCE/ARTS protocol (pelvis, spine-less set of 14).
H36M_EVAL14 = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)


#: The local (kinematic) scan orders a dual-scan block can walk: see the module docstring.
KINEMATIC_SCANS = ("tree", "limbs")


def kinematic_scan(joint_set: JointSet, kind: str) -> tuple[int, ...]:
    """The local scan's joint sequence: ``"tree"`` -> :attr:`JointSet.tree_walk` (revisits the
    branching joints), ``"limbs"`` -> :attr:`JointSet.scan_order` (a permutation)."""
    if kind == "tree":
        return joint_set.tree_walk
    if kind == "limbs":
        return joint_set.scan_order
    raise InputError(f"unknown kinematic scan {kind!r}", field="kinematic_scan", expected=" | ".join(KINEMATIC_SCANS))


def get_joint_set(name: str) -> JointSet:
    """Look up a joint set by name, with a clear error for unknown names."""
    try:
        return JOINT_SETS[name]
    except KeyError:
        raise InputError(f"unknown joint set '{name}'", field="joint_set",
                         expected=f"one of {sorted(JOINT_SETS)}") from None


def _perm(x: torch.Tensor, index: tuple[int, ...], dim: int) -> torch.Tensor:
    if x.shape[dim] != len(index):
        raise ValueError(f"joint axis {dim} has size {x.shape[dim]}, expected {len(index)}")
    return x.index_select(dim, torch.as_tensor(index, device=x.device))


def to_scan_order(x: torch.Tensor, joint_set: JointSet, dim: int = -2) -> torch.Tensor:
    """Reorder joints into the kinematic scan order. x: (..., J, C) with J on ``dim``."""
    return _perm(x, joint_set.scan_order, dim)


def from_scan_order(x: torch.Tensor, joint_set: JointSet, dim: int = -2) -> torch.Tensor:
    """Inverse of :func:`to_scan_order`. x: (..., J, C) in scan order -> index order."""
    return _perm(x, joint_set.scan_inverse, dim)


def flip_joints(x: np.ndarray | torch.Tensor, joint_set: JointSet, axis: int = -2):
    """Swap left and right joint slots (no coordinate mirroring). x: (..., J, C)."""
    idx = list(joint_set.flip)
    if isinstance(x, torch.Tensor):
        return _perm(x, tuple(idx), axis)
    return np.take(x, idx, axis=axis)
