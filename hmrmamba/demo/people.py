"""Which of the tracked people the demo follows, and where it may have jumped to someone else.

:class:`PeopleTracks` gathers the :class:`hmrmamba.demo.blazepose.Person` lists of a whole video,
one row of H36M-17 keypoints per track and frame (NaN where the track is absent).

**The rule** (:func:`rank_tracks`): each track gets a *prominence*, the sum over the frames where
it is detected of ``(box height / image height) x (1 - 0.5 r)``, ``r`` the distance of the box
centre from the image centre divided by half the image diagonal (0 in the middle, 1 in a corner).
So a person who is large, central and there for long ranks first; a small detection at the edge
(or a false one, such as a garment on the grass) ranks last. The demo follows rank 0, or rank N
with ``--person N``, and prints the ranking.

**Jumps** (:func:`jump_frames`): the followed track keeps its id through the tracker's matching, so
it is one person unless the tracker's matching went wrong. A detected frame is flagged
``person_jump`` when the keypoints' centre moved from the previous detection of the track by
more than :data:`JUMP_FRACTION` x box height x (frames between them): a move no walking person
makes, i.e. possibly someone else. The flags go into ``meshes.npz``; nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hmrmamba.demo.keypoints import KeypointTrack, make_track, mediapipe33_to_h36m17
from hmrmamba.errors import InputError

__all__ = ["JUMP_FRACTION", "PeopleTracks", "TrackSummary", "jump_frames", "rank_tracks", "select_person"]

#: a detection farther than this many box heights per frame from the track's last one is flagged
JUMP_FRACTION = 0.5


@dataclass
class TrackSummary:
    """One track: id, first and last frame, frames detected, mean box height px, prominence."""

    track: int
    first: int
    last: int
    frames: int
    height: float
    prominence: float

    def describe(self) -> str:
        return (f"track {self.track}: frames {self.first}-{self.last} ({self.frames} detected), "
                f"mean height {self.height:.0f} px, prominence {self.prominence:.2f}")


@dataclass
class PeopleTracks:
    """Per-track H36M-17 keypoints of a video: ``keypoints[id]`` (N, 17, 2) px (NaN: absent),
    ``confidence[id]`` (N, 17), ``boxes[id]`` (N, 4) px of the 33 landmarks (NaN: absent);
    ``count`` (N,) people found per frame; ``image_size`` (H, W)."""

    num_frames: int
    image_size: tuple[int, int]
    keypoints: dict[int, np.ndarray] = field(default_factory=dict)
    confidence: dict[int, np.ndarray] = field(default_factory=dict)
    boxes: dict[int, np.ndarray] = field(default_factory=dict)
    count: np.ndarray | None = None

    @classmethod
    def from_frames(cls, people: list[list], image_size: tuple[int, int]) -> PeopleTracks:
        """people: per frame, a list of :class:`hmrmamba.demo.blazepose.Person`."""
        n = len(people)
        out = cls(num_frames=n, image_size=(int(image_size[0]), int(image_size[1])),
                  count=np.array([len(p) for p in people], np.int32))
        for t, frame_people in enumerate(people):
            for p in frame_people:
                if p.track not in out.keypoints:
                    out.keypoints[p.track] = np.full((n, 17, 2), np.nan, np.float32)
                    out.confidence[p.track] = np.zeros((n, 17), np.float32)
                    out.boxes[p.track] = np.full((n, 4), np.nan, np.float32)
                kp, conf = mediapipe33_to_h36m17(p.landmarks, p.visibility)
                out.keypoints[p.track][t], out.confidence[p.track][t] = kp, conf
                out.boxes[p.track][t] = p.box
        return out

    def track(self, track: int) -> KeypointTrack:
        """One track as the demo's KeypointTrack (frames without it: NaN, confidence 0, not detected)."""
        return make_track(self.keypoints[track], self.confidence[track], image_size=self.image_size)


def rank_tracks(people: PeopleTracks) -> list[TrackSummary]:
    """Tracks with at least one detected frame, most prominent first (ties: the lower id)."""
    h_img, w_img = people.image_size
    centre = np.array([w_img / 2.0, h_img / 2.0])
    half_diag = 0.5 * float(np.hypot(w_img, h_img))
    out = []
    for track in people.keypoints:
        det = people.track(track).detected
        if not det.any():
            continue
        box = people.boxes[track][det].astype(np.float64)
        height = box[:, 3] - box[:, 1]
        r = np.minimum(np.linalg.norm((box[:, :2] + box[:, 2:]) / 2.0 - centre, axis=-1) / half_diag, 1.0)
        idx = np.flatnonzero(det)
        out.append(TrackSummary(track=int(track), first=int(idx[0]), last=int(idx[-1]), frames=int(det.sum()),
                                height=float(height.mean()),
                                prominence=float(np.sum(height / h_img * (1.0 - 0.5 * r)))))
    out.sort(key=lambda s: (-s.prominence, s.track))
    return out


def jump_frames(track: KeypointTrack, fraction: float = JUMP_FRACTION) -> np.ndarray:
    """-> (N,) bool: detected frames whose confident keypoints' centre is farther from the previous
    detected frame's than ``fraction`` x its box height x the frames between them."""
    det = np.asarray(track.detected, bool)
    ok = np.isfinite(track.keypoints).all(-1) & (track.confidence >= 0.3)
    out = np.zeros(len(det), bool)
    prev = None
    for t in np.flatnonzero(det):
        pts = track.keypoints[t][ok[t]].astype(np.float64)
        centre = pts.mean(0)
        height = float(np.ptp(pts[:, 1])) if len(pts) > 1 else 0.0
        if prev is not None:
            t0, c0, h0 = prev
            if np.linalg.norm(centre - c0) > fraction * max(height, h0, 1.0) * (t - t0):
                out[t] = True
        prev = (t, centre, height)
    return out


def select_person(people: PeopleTracks, person: int | None = None) -> tuple[KeypointTrack, list[TrackSummary], int]:
    """-> (the followed track's keypoints, the ranking, the rank taken): rank ``person`` (default 0,
    the most prominent). ``InputError`` when nobody was found or ``person`` is out of range."""
    ranking = rank_tracks(people)
    if not ranking:
        raise InputError("no person detected in any frame", field="keypoints",
                         expected="at least one frame with a detected person")
    rank = 0 if person is None else person
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < len(ranking):
        raise InputError(f"--person {person!r}, but {len(ranking)} people were tracked", field="--person",
                         expected=f"an integer in [0, {len(ranking) - 1}] (0 = the most prominent)")
    return people.track(ranking[rank].track), ranking, int(rank)
