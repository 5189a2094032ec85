"""Where the images of a prepared real split are, following each dataset's own on-disk layout.

A real split stores no pixels; its sequences say which recording they come from. This module
maps every sequence to a :class:`FrameSource` (a video file, or one image file per frame) and
every split row to the frame of that source it was taken from:

* Human3.6M: ``<root>/<subject>/Videos/<action>.<camera id>.mp4``, the 50 fps original videos;
  row ``t`` of a sequence is video frame ``t * frame_stride`` (the split's ``frame_stride``
  attribute, 2 by default). VideoPose3D renamed a few actions (``TakingPhoto`` -> ``Photo``,
  ``WalkingDog`` -> ``WalkDog``); the original video names are accepted too.
* 3DPW: ``<root>/imageFiles/<sequence>/image_%05d.jpg``; row ``t`` is ``image_{t:05d}.jpg``.
* MPI-INF-3DHP: ``<root>/mpi_inf_3dhp_test_set/<TSn>/imageSequence/img_%06d.jpg``, numbered from 1;
  row ``t`` is ``img_{t+1:06d}.jpg``.

Sources may be a uniformly downscaled copy of the originals (the keypoints, in original pixels,
are scaled to the frame size; see :func:`source_scale`). :func:`require_sources` checks that every
file exists before any work starts and lists the missing ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmrmamba.errors import InputError, MissingFileError

H36M_VIDEO_DIR = "Videos"
PW3D_IMAGE_DIR = "imageFiles"
PW3D_IMAGE = "image_{:05d}.jpg"
MPI3DHP_TEST_DIR = "mpi_inf_3dhp_test_set"
MPI3DHP_IMAGE_DIR = "imageSequence"
MPI3DHP_IMAGE = "img_{:06d}.jpg"
#: VideoPose3D's action names -> the names of the original Human3.6M videos, where they differ.
H36M_VIDEO_ACTION_NAMES = {"Photo": "TakingPhoto", "WalkDog": "WalkingDog", "WalkTogether": "WalkingTogether"}
#: largest relative difference of the x and y scale of a downscaled source (aspect ratio kept).
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class FrameSource:
    """The images of one sequence: a video (``files`` empty) or one image file per split row.

    ``frames`` (n,) int: the 0-based source frame of each row; ``image_wh``: the (width, height)
    of the original images the split's keypoints are measured in.
    """

    seq_name: str
    path: Path  # the video file, or the folder holding the image files
    frames: np.ndarray
    image_wh: tuple[int, int]
    files: tuple[Path, ...] = ()
    alternatives: tuple[Path, ...] = ()  # other accepted names of a video (the first existing is used)

    @property
    def kind(self) -> str:
        return "images" if self.files else "video"

    def resolved(self) -> FrameSource:
        """The same source with ``path`` set to the first existing of ``path`` and ``alternatives``."""
        for cand in (self.path, *self.alternatives):
            if cand.exists():
                return FrameSource(self.seq_name, cand, self.frames, self.image_wh, self.files)
        return self

    def missing(self) -> list[Path]:
        """Expected files that are absent (a video: its primary name; a folder: the folder or files)."""
        if not self.files:
            return [] if any(p.is_file() for p in (self.path, *self.alternatives)) else [self.path]
        if not self.path.is_dir():
            return [self.path]
        return [f for f in self.files if not f.is_file()]


def split_frame_index(seq_len: np.ndarray, *, stride: int = 1, offset: int = 0) -> np.ndarray:
    """seq_len: (S,) -> (N,) int: source frame of every split row, ``offset + stride * t`` per sequence."""
    lens = np.asarray(seq_len, dtype=np.int64)
    if stride < 1 or offset < 0:
        raise InputError(f"stride={stride}, offset={offset}", field="frame_stride",
                         expected="stride >= 1 and offset >= 0")
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    return offset + stride * (np.arange(int(lens.sum()), dtype=np.int64) - starts)


def _seq_field(data, name: str, dataset: str) -> np.ndarray:
    if name not in data.seqs:
        raise InputError("missing sequence field", file=data.path, field=f"sequences/{name}",
                         expected=f"a split written by the {dataset} reader (re-run prepare)")
    return data.seqs[name]


def _image_wh(data, i: int, dataset: str) -> tuple[int, int]:
    wh = np.asarray(_seq_field(data, "image_wh", dataset)[i]).reshape(-1)
    return int(wh[0]), int(wh[1])


def h36m_video_paths(root: str | Path, subject: str, action: str, camera_id: str) -> list[Path]:
    """The accepted names of one Human3.6M video, the usual one first."""
    base = Path(root) / subject / H36M_VIDEO_DIR
    names = [action]
    head, _, tail = action.partition(" ")
    if head in H36M_VIDEO_ACTION_NAMES:
        names.append(" ".join(filter(None, (H36M_VIDEO_ACTION_NAMES[head], tail))))
    return [base / f"{name}.{camera_id}.mp4" for name in names]


def h36m_sources(root: str | Path, data) -> list[FrameSource]:
    """Frame sources of a Human3.6M split (``data``: :class:`hmrmamba.data.h5schema.Split`)."""
    from hmrmamba.data.real.h36m_cameras import CAMERA_IDS

    stride = int(data.attrs.get("frame_stride", 2))
    subjects = _seq_field(data, "subject", "h36m")
    actions = _seq_field(data, "motion", "h36m")
    cams = _seq_field(data, "camera_index", "h36m")
    full = _seq_field(data, "source_frames", "h36m")
    out = []
    for i, n in enumerate(data.seqs["seq_len"]):
        c = int(cams[i])
        if not 0 <= c < len(CAMERA_IDS):
            raise InputError(f"camera index {c}", file=data.path, field="sequences/camera_index",
                             expected=f"0..{len(CAMERA_IDS) - 1}")
        frames = split_frame_index(np.array([n]), stride=stride)
        if len(frames) and frames[-1] >= int(full[i]):
            raise InputError(f"{n} rows at stride {stride} need {frames[-1] + 1} frames, the sequence has "
                             f"{int(full[i])}", file=data.path, field="sequences/source_frames",
                             expected="a split written by the h36m reader (re-run prepare)")
        paths = h36m_video_paths(root, str(subjects[i]), str(actions[i]), CAMERA_IDS[c])
        out.append(FrameSource(str(data.seqs["seq_name"][i]), paths[0], frames, _image_wh(data, i, "h36m"),
                               alternatives=tuple(paths[1:])))
    return out


def pw3d_sources(root: str | Path, data) -> list[FrameSource]:
    """Frame sources of a 3DPW split: ``imageFiles/<sequence>/image_%05d.jpg`` (row t -> image t)."""
    sequences = _seq_field(data, "subject", "3dpw")
    out = []
    for i, n in enumerate(data.seqs["seq_len"]):
        folder = Path(root) / PW3D_IMAGE_DIR / str(sequences[i])
        frames = np.arange(int(n), dtype=np.int64)
        files = tuple(folder / PW3D_IMAGE.format(int(t)) for t in frames)
        out.append(FrameSource(str(data.seqs["seq_name"][i]), folder, frames, _image_wh(data, i, "3dpw"), files))
    return out


def mpi3dhp_sources(root: str | Path, data) -> list[FrameSource]:
    """Frame sources of the 3DHP test split: ``TSn/imageSequence/img_%06d.jpg`` (row t -> img t+1)."""
    out = []
    for i, n in enumerate(data.seqs["seq_len"]):
        name = str(data.seqs["seq_name"][i])
        folder = Path(root) / MPI3DHP_TEST_DIR / name / MPI3DHP_IMAGE_DIR
        frames = np.arange(int(n), dtype=np.int64)
        files = tuple(folder / MPI3DHP_IMAGE.format(int(t) + 1) for t in frames)
        out.append(FrameSource(name, folder, frames, _image_wh(data, i, "3dhp"), files))
    return out


#: ``dataset.name`` -> the function that maps a split's sequences to their frame sources.
SOURCES = {"h36m": h36m_sources, "3dpw": pw3d_sources, "3dhp": mpi3dhp_sources}


def frame_sources(dataset: str, root: str | Path, data) -> list[FrameSource]:
    """One :class:`FrameSource` per sequence of ``data`` (a read split) of ``dataset``, in order."""
    if dataset not in SOURCES:
        raise InputError(f"no image layout for dataset '{dataset}'", file="params.yaml", field="dataset.name",
                         expected=f"one of {sorted(SOURCES)}")
    return SOURCES[dataset](root, data)


def require_sources(sources: Mapping[str, Sequence[FrameSource]], *, dataset: str, root: str | Path,
                    shown: int = 20) -> None:
    """Raise one :class:`MissingFileError` naming the absent videos/images of all splits (before any work).

    ``sources``: split name -> its frame sources. At most ``shown`` paths are listed, with the count.
    """
    missing: list[Path] = []
    for seq_sources in sources.values():
        for src in seq_sources:
            missing.extend(src.missing())
    missing = list(dict.fromkeys(missing))  # splits may share sequences (Human3.6M val = test)
    if not missing:
        return
    listing = ", ".join(str(p) for p in missing[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    layout = {"h36m": f"<root>/<subject>/{H36M_VIDEO_DIR}/<action>.<camera id>.mp4",
              "3dpw": f"<root>/{PW3D_IMAGE_DIR}/<sequence>/image_%05d.jpg",
              "3dhp": f"<root>/{MPI3DHP_TEST_DIR}/TSn/{MPI3DHP_IMAGE_DIR}/img_%06d.jpg"}.get(dataset, "")
    raise MissingFileError(
        f"{dataset}: {len(missing)} expected image source(s) missing under {root}: {listing}{more}",
        file=missing[0], field="features.image_root",
        expected=f"the dataset's images as {layout} (docs/real_data.md), or features.import_path")


def source_size(source: FrameSource) -> tuple[int, int]:
    """(H, W) of the source's frames (the video's, or the first image's)."""
    if source.files:
        return _load(source.files[0]).shape[:2]
    from hmrmamba.data.video import VideoReader

    return VideoReader(source.resolved().path).size


def source_scale(source: FrameSource, size_hw: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy): frame pixels per original pixel; an aspect change over ``ASPECT_TOLERANCE`` is an error."""
    width, height = source.image_wh
    sx, sy = size_hw[1] / width, size_hw[0] / height
    if abs(sx - sy) > ASPECT_TOLERANCE * max(sx, sy):
        raise InputError(f"frames are {size_hw[1]}x{size_hw[0]}, the annotations are for {width}x{height}",
                         file=source.resolved().path, field="size",
                         expected="the original resolution or a copy scaled by the same factor in x and y")
    return sx, sy


def _load(file: Path, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    import imageio.v3 as iio

    from hmrmamba.data.video import to_rgb_uint8

    try:
        image = to_rgb_uint8(iio.imread(file, plugin="pillow"), file=file)
    except FileNotFoundError:
        raise MissingFileError("image not found", file=file, expected="one image per frame") from None
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # pillow's errors for a broken/unknown image
        raise InputError(f"cannot be read as an image ({type(err).__name__})", file=file, field="pixels",
                         expected="a jpg or png image") from None
    if size_hw is not None and image.shape[:2] != tuple(size_hw):
        raise InputError(f"image of size {image.shape[:2]}", file=file, field="size",
                         expected=f"{tuple(size_hw)} (H, W) as the sequence's other frames")
    return image


def iter_frames(source: FrameSource) -> Iterator[np.ndarray]:
    """Yield the (H, W, 3) uint8 RGB frame of every row of ``source``, in order (streamed)."""
    if source.files:
        size = None
        for file in source.files:
            image = _load(file, size)
            size = image.shape[:2]
            yield image
        return
    from hmrmamba.data.video import VideoReader

    wanted = np.asarray(source.frames, dtype=np.int64)
    if len(wanted) == 0:
        return
    if np.any(np.diff(wanted) <= 0) or wanted[0] < 0:
        raise InputError("source frames not increasing", field="frames", expected="increasing frame indices")
    video = VideoReader(source.resolved().path)
    if wanted[-1] >= video.num_frames:
        raise InputError(f"video has {video.num_frames} frames, sequence '{source.seq_name}' needs "
                         f"frame {int(wanted[-1])}", file=video.path, field="frames",
                         expected=f"at least {int(wanted[-1]) + 1} frames (the mocap's length)")
    k = 0
    for t, frame in enumerate(video.frames(0, int(wanted[-1]) + 1)):
        if t == wanted[k]:
            yield frame
            k += 1
