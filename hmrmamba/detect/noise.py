"""Simulated 2D keypoint detectors: a parametric noise model applied to ground-truth 2D joints.

Real detectors (stacked hourglass, Detectron, CPN) err in a few characteristic ways, each one a
parameter of :class:`DetectorNoiseModel`:

* **jitter** -- a per-joint Gaussian offset whose per-axis std is ``sigma * joint_scale[j]`` times
  the person's size (the longer side of the 2D joints' bounding box, per frame). Distal joints
  (wrists, ankles, elbows) get larger multipliers than hips and shoulders. The jitter is
  temporally correlated: an AR(1) process ``e[t] = a e[t-1] + sqrt(1 - a^2) w[t]`` with unit
  stationary variance, started afresh (from the stationary law) at the first frame of every
  sequence, so no noise leaks across sequence boundaries;
* **left/right swaps** -- per frame and per limb pair (hips, knees, ankles, shoulders, elbows,
  wrists) a swap starts with probability ``swap_prob`` and lasts ``swap_len`` frames (uniform,
  clipped at the end of the sequence); the two slots then report each other's position;
* **dropped joints** -- a joint is lost (e.g. occluded) with start probability ``drop_prob`` for
  ``drop_len`` frames: its position gets extra white noise ``drop_sigma`` and its confidence is low;
* **outliers** -- with probability ``outlier_prob`` a joint jumps (for one frame) to a uniform random
  point in the person's box enlarged by ``outlier_margin`` on each side; low confidence.

Confidence: ``conf_high * exp(-r^2 / (2 conf_width^2))`` for a joint whose jitter is ``r`` standard
deviations, times ``conf_swap`` while swapped (detectors are often confident about swaps), and a
uniform draw from ``conf_drop`` / ``conf_outlier`` for dropped joints / outliers.

The presets ``sh``, ``detectron`` and ``cpn`` are calibrated so that their mean 2D errors rank
SH > Detectron > CPN, at magnitudes relative to the person's size like those on Human3.6M (see
``docs/detectors.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from hmrmamba.errors import InputError
from hmrmamba.skeleton import H36M17

NUM_JOINTS = H36M17.num_joints

#: Per-joint jitter multipliers in H36M-17 order: torso joints are localised best, wrists worst.
JOINT_SCALE_H36M17: tuple[float, ...] = (
    0.8,                # pelvis
    1.0, 1.25, 1.5,     # right hip, knee, ankle
    1.0, 1.25, 1.5,     # left hip, knee, ankle
    0.85, 0.8, 0.85,    # spine, thorax, neck/nose
    1.0,                # head
    0.9, 1.3, 1.7,      # left shoulder, elbow, wrist
    0.9, 1.3, 1.7,      # right shoulder, elbow, wrist
)

#: The left/right limb joint pairs that a detector may confuse, as (slot, mirrored slot).
LIMB_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (i, H36M17.flip[i]) for i in range(NUM_JOINTS) if H36M17.flip[i] > i)


@dataclass(frozen=True)
class DetectorNoiseModel:
    """Error model of a 2D keypoint detector. Lengths are fractions of the person's box size."""

    name: str = "custom"
    sigma: float = 0.01                     # per-axis jitter std / box size, before joint_scale
    joint_scale: tuple[float, ...] = JOINT_SCALE_H36M17
    ar_coef: float = 0.7                    # AR(1) coefficient of the jitter, in [0, 1)
    swap_prob: float = 0.0                  # per frame and limb pair: probability a swap starts
    swap_len: tuple[int, int] = (2, 6)      # swap duration in frames, inclusive range
    drop_prob: float = 0.0                  # per frame and joint: probability a drop starts
    drop_len: tuple[int, int] = (1, 4)      # drop duration in frames, inclusive range
    drop_sigma: float = 0.03                # extra per-axis white noise of dropped joints / box
    outlier_prob: float = 0.0               # per frame and joint: probability of an outlier
    outlier_margin: float = 0.15            # outliers land in the box enlarged by this per side
    conf_high: float = 0.95                 # confidence of an error-free clean joint
    conf_width: float = 3.0                 # confidence falls off over this many jitter stds
    conf_swap: float = 0.85                 # confidence factor while a joint is swapped
    conf_drop: tuple[float, float] = (0.02, 0.3)
    conf_outlier: tuple[float, float] = (0.05, 0.4)

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> InputError:
            return InputError(f"invalid detector noise model '{self.name}'", field=field,
                              expected=expected)

        for f in ("sigma", "drop_sigma", "outlier_margin"):
            v = getattr(self, f)
            if not (np.isfinite(v) and v >= 0):
                raise bad(f, "a finite number >= 0")
        if len(self.joint_scale) != NUM_JOINTS or not all(
                np.isfinite(s) and s >= 0 for s in self.joint_scale):
            raise bad("joint_scale", f"{NUM_JOINTS} finite multipliers >= 0")
        if not (0.0 <= self.ar_coef < 1.0):
            raise bad("ar_coef", "a number in [0, 1)")
        for f in ("swap_prob", "drop_prob", "outlier_prob", "conf_high", "conf_swap"):
            if not (0.0 <= getattr(self, f) <= 1.0):
                raise bad(f, "a probability in [0, 1]")
        for f in ("swap_len", "drop_len"):
            lo, hi = getattr(self, f)
            if not (int(lo) == lo and int(hi) == hi and 1 <= lo <= hi):
                raise bad(f, "integers (lo, hi) with 1 <= lo <= hi")
        for f in ("conf_drop", "conf_outlier"):
            lo, hi = getattr(self, f)
            if not (0.0 <= lo <= hi <= 1.0):
                raise bad(f, "(lo, hi) with 0 <= lo <= hi <= 1")
        if not self.conf_width > 0:
            raise bad("conf_width", "a number > 0")

    def scaled(self, factor: float) -> DetectorNoiseModel:
        """A copy with every positional error (jitter, drop noise) multiplied by ``factor``."""
        return replace(self, name=f"{self.name}x{factor:g}", sigma=self.sigma * factor,
                       drop_sigma=self.drop_sigma * factor)

    def to_dict(self) -> dict:
        """Plain-Python parameters (JSON-serialisable)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


#: Presets. Target mean 2D error (see docs/detectors.md): SH ~2.4 %, Detectron ~1.9 %,
#: CPN ~1.4 % of the person's box size, i.e. ~9.5 / 7.5 / 5.5 px for a ~400 px tall H36M subject.
PRESETS: dict[str, DetectorNoiseModel] = {
    "sh": DetectorNoiseModel(name="sh", sigma=0.0130, ar_coef=0.5, swap_prob=0.004,
                             drop_prob=0.01, drop_sigma=0.04, outlier_prob=0.004),
    "detectron": DetectorNoiseModel(name="detectron", sigma=0.0116, ar_coef=0.6, swap_prob=0.002,
                                    drop_prob=0.006, drop_sigma=0.03, outlier_prob=0.002),
    "cpn": DetectorNoiseModel(name="cpn", sigma=0.0090, ar_coef=0.7, swap_prob=0.001,
                              drop_prob=0.004, drop_sigma=0.025, outlier_prob=0.001),
}


def get_preset(name: str) -> DetectorNoiseModel:
    """Look up a simulated-detector preset by name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown detector preset '{name}'", field="detector",
                         expected=f"one of {sorted(PRESETS)}") from None


@dataclass
class SimulatedDetections:
    """Output of :func:`simulate_events`: keypoints, confidences and the injected error events."""

    kp: np.ndarray        # (N, 17, 2) float32 pixels
    conf: np.ndarray      # (N, 17) float32 in [0, 1]
    swapped: np.ndarray   # (N, 17) bool: slot reports its mirrored joint
    dropped: np.ndarray   # (N, 17) bool
    outlier: np.ndarray   # (N, 17) bool
    jitter: np.ndarray    # (N, 17, 2) float64 unit-variance AR(1) jitter (before scaling)


def sequence_layout(seq_start: np.ndarray, seq_len: np.ndarray, num_frames: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence-major frame order. -> (frame (K,), t_in_seq (K,), end_k (K,)) with K == num_frames.

    ``frame[k]`` is the dataset frame at sequence-major position ``k``, ``t_in_seq[k]`` its index
    inside its sequence and ``end_k[k]`` the (exclusive) sequence-major end of its sequence.
    Raises :class:`InputError` unless the sequences cover every frame exactly once.
    """
    seq_start = np.asarray(seq_start)
    seq_len = np.asarray(seq_len)
    if seq_start.ndim != 1 or seq_start.shape != seq_len.shape:
        raise InputError(f"seq_start {seq_start.shape} and seq_len {seq_len.shape} differ",
                         field="seq_start/seq_len", expected="two 1-D arrays of equal length (S,)")
    if seq_start.size and (seq_start.dtype.kind not in "iu" or seq_len.dtype.kind not in "iu"):
        raise InputError(f"dtypes {seq_start.dtype}/{seq_len.dtype}", field="seq_start/seq_len",
                         expected="integer arrays")
    seq_start = seq_start.astype(np.int64)
    seq_len = seq_len.astype(np.int64)
    if np.any(seq_len < 1) or np.any(seq_start < 0) or np.any(seq_start + seq_len > num_frames):
        raise InputError("a sequence is empty or runs outside the frames", field="seq_start/seq_len",
                         expected=f"seq_len >= 1 and 0 <= seq_start, seq_start + seq_len <= {num_frames}")
    cover = np.zeros(num_frames + 1, dtype=np.int64)
    np.add.at(cover, seq_start, 1)
    np.add.at(cover, seq_start + seq_len, -1)
    if not np.all(np.cumsum(cover)[:num_frames] == 1):
        raise InputError("sequences overlap or leave frames uncovered", field="seq_start/seq_len",
                         expected=f"sequences covering each of the {num_frames} frames exactly once")
    k_start = np.concatenate([[0], np.cumsum(seq_len)[:-1]]).astype(np.int64)
    t_in_seq = np.arange(num_frames, dtype=np.int64) - np.repeat(k_start, seq_len)
    frame = np.repeat(seq_start, seq_len) + t_in_seq
    end_k = np.repeat(k_start + seq_len, seq_len)
    return frame, t_in_seq, end_k


def ar1_jitter(innov: np.ndarray, t_in_seq: np.ndarray, coef: float) -> np.ndarray:
    """Unit-variance AR(1) noise restarted at each sequence. innov: (K, ...) N(0,1), sequence-major.

    ``e[0] = w[0]`` and ``e[t] = a e[t-1] + sqrt(1-a^2) w[t]`` inside each sequence (``t_in_seq``
    restarts at 0). One linear filter runs over all frames; the part of the filter state carried
    over from the previous sequence, ``a^(t+1) y[start-1]``, is then subtracted exactly.
    """
    from scipy.signal import lfilter  # deferred: scipy.signal takes ~1 s to import

    k = innov.shape[0]
    if k == 0 or coef == 0.0:
        return innov.astype(np.float64, copy=True)
    b = np.sqrt(1.0 - coef * coef)
    bshape = (k,) + (1,) * (innov.ndim - 1)
    starts = (t_in_seq == 0).reshape(bshape)
    x = np.where(starts, innov / b, innov)          # so that e[start] = b * w / b = w
    y = lfilter([b], [1.0, -coef], x, axis=0)
    prev_idx = np.arange(k) - t_in_seq - 1          # y index just before this sequence starts
    carry = np.where((prev_idx >= 0).reshape(bshape), y[np.maximum(prev_idx, 0)], 0.0)
    decay = (coef ** (t_in_seq + 1).astype(np.float64)).reshape(bshape)
    return y - decay * carry


def _runs(start: np.ndarray, length: np.ndarray, end_k: np.ndarray) -> np.ndarray:
    """Boolean (K, P): event starts at (k, p) last ``length`` frames, clipped at ``end_k[k]``."""
    k, p = start.shape
    ks, ps = np.nonzero(start)
    stop = np.minimum(ks + length[ks, ps], end_k[ks])
    diff = np.zeros((k + 1, p), dtype=np.int64)
    np.add.at(diff, (ks, ps), 1)
    np.add.at(diff, (stop, ps), -1)
    return np.cumsum(diff, axis=0)[:k] > 0


def person_scale(joints2d: np.ndarray) -> np.ndarray:
    """Person size per frame: longer side of the joints' 2D box, at least 1 px. (N, J, 2) -> (N,)."""
    ext = joints2d.max(axis=1) - joints2d.min(axis=1)
    return np.maximum(ext.max(axis=-1), 1.0)


def parse_image_size(image_size) -> tuple[float, float] | None:
    """``None``, an int or (W, H) -> (W, H) in px, or ``None``; raises InputError otherwise."""
    if image_size is None:
        return None
    size = np.atleast_1d(np.asarray(image_size, dtype=np.float64))
    if size.shape not in ((1,), (2,)) or not np.all(np.isfinite(size)) or np.any(size < 1):
        raise InputError(f"image_size {image_size!r}", field="image_size",
                         expected="an int or (width, height) >= 1 px")
    w, h = (size[0], size[0]) if size.shape == (1,) else (size[0], size[1])
    return float(w), float(h)


def validate_joints2d(joints2d: np.ndarray) -> np.ndarray:
    """Check GT joints. (N, 17, 2) finite float px -> float64 copy; raises InputError otherwise."""
    joints2d = np.asarray(joints2d)
    if joints2d.ndim != 3 or joints2d.shape[1:] != (NUM_JOINTS, 2):
        raise InputError(f"shape {joints2d.shape}", field="joints2d",
                         expected=f"(N, {NUM_JOINTS}, 2) pixels in H36M-17 order")
    if joints2d.dtype.kind != "f" or not np.all(np.isfinite(joints2d)):
        raise InputError("non-float or non-finite values", field="joints2d",
                         expected="finite floating-point pixels")
    return joints2d.astype(np.float64)


def simulate_events(joints2d: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray, *,
                    model: DetectorNoiseModel, rng: np.random.Generator,
                    image_size: int | tuple[int, int] | None = None) -> SimulatedDetections:
    """Simulate a detector and keep its error events. joints2d: (N, 17, 2) px -> see the record.

    All random numbers are drawn up front in a fixed order and shape, so the result is a pure
    function of the inputs and the generator state. ``image_size`` (int or (W, H)), if given,
    clips the keypoints into the image as a heatmap detector would.
    """
    gt = validate_joints2d(joints2d)
    n = gt.shape[0]
    frame, t_in_seq, end_k = sequence_layout(seq_start, seq_len, n)
    wh = parse_image_size(image_size)
    npairs = len(LIMB_PAIRS)

    # --- all draws, fixed order (sequence-major) -------------------------------------------
    innov = rng.standard_normal((n, NUM_JOINTS, 2))
    swap_start = rng.random((n, npairs)) < model.swap_prob
    swap_dur = rng.integers(model.swap_len[0], model.swap_len[1] + 1, size=(n, npairs))
    drop_start = rng.random((n, NUM_JOINTS)) < model.drop_prob
    drop_dur = rng.integers(model.drop_len[0], model.drop_len[1] + 1, size=(n, NUM_JOINTS))
    drop_noise = rng.standard_normal((n, NUM_JOINTS, 2))
    outlier = rng.random((n, NUM_JOINTS)) < model.outlier_prob
    outlier_u = rng.random((n, NUM_JOINTS, 2))
    conf_u = rng.random((n, NUM_JOINTS))

    # --- events in sequence-major order, then back to frame order ---------------------------
    swap_pairs = _runs(swap_start, swap_dur, end_k)
    dropped_k = _runs(drop_start, drop_dur, end_k)
    jitter_k = ar1_jitter(innov, t_in_seq, model.ar_coef)

    def to_frames(a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        out[frame] = a
        return out

    jitter = to_frames(jitter_k)
    dropped = to_frames(dropped_k)
    swap_pairs = to_frames(swap_pairs)
    drop_noise, outlier, outlier_u, conf_u = map(to_frames, (drop_noise, outlier, outlier_u, conf_u))

    swapped = np.zeros((n, NUM_JOINTS), dtype=bool)
    src = np.broadcast_to(np.arange(NUM_JOINTS), (n, NUM_JOINTS)).copy()
    for p, (a, b) in enumerate(LIMB_PAIRS):
        on = swap_pairs[:, p]
        swapped[on, a] = swapped[on, b] = True
        src[on, a], src[on, b] = b, a
    base = np.take_along_axis(gt, src[..., None], axis=1)

    scale = person_scale(gt)                                        # (N,)
    std = model.sigma * np.asarray(model.joint_scale)[None, :] * scale[:, None]   # (N, 17) px
    kp = base + jitter * std[..., None]
    kp = np.where(dropped[..., None], kp + drop_noise * (model.drop_sigma * scale)[:, None, None], kp)
    lo = gt.min(axis=1) - model.outlier_margin * scale[:, None]    # (N, 2)
    hi = gt.max(axis=1) + model.outlier_margin * scale[:, None]
    jump = lo[:, None, :] + outlier_u * (hi - lo)[:, None, :]
    kp = np.where(outlier[..., None], jump, kp)
    if wh is not None:
        kp = np.clip(kp, 0.0, np.array([wh[0] - 1.0, wh[1] - 1.0]))

    r2 = (jitter ** 2).sum(-1) if model.sigma > 0 else np.zeros((n, NUM_JOINTS))
    conf = model.conf_high * np.exp(-0.5 * r2 / model.conf_width ** 2)
    conf = np.where(swapped, conf * model.conf_swap, conf)
    conf = np.where(dropped, model.conf_drop[0] + conf_u * (model.conf_drop[1] - model.conf_drop[0]), conf)
    conf = np.where(outlier, model.conf_outlier[0]
                    + conf_u * (model.conf_outlier[1] - model.conf_outlier[0]), conf)
    return SimulatedDetections(kp=kp.astype(np.float32), conf=np.clip(conf, 0, 1).astype(np.float32),
                               swapped=swapped, dropped=dropped, outlier=outlier, jitter=jitter)


def simulate(joints2d: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray, *,
             model: DetectorNoiseModel, rng: np.random.Generator,
             image_size: int | tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy detections of GT joints. joints2d: (N, 17, 2) px -> kp (N, 17, 2) f32 px, conf (N, 17) f32."""
    out = simulate_events(joints2d, seq_start, seq_len, model=model, rng=rng, image_size=image_size)
    return out.kp, out.conf
