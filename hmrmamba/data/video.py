"""Read and write videos: an mp4/avi/... file (ffmpeg via ``imageio-ffmpeg``) or a folder of frames.

``VideoReader(path)`` gives one interface over both sources: ``fps``, an exact ``num_frames``,
``size`` as ``(H, W)``, iteration over ``(H, W, 3)`` uint8 RGB frames (streamed, one frame in
memory at a time) and ``read(start, stop)`` for a range. ``write_video`` writes a video file
atomically (a temporary sibling file renamed into place), so a crash never leaves half a video.

Frame folders hold ``.jpg``/``.jpeg``/``.png`` files sorted *naturally* (``img_2`` before
``img_10``); they carry no frame rate, so ``fps`` is the ``fps`` argument (default 25).

Frames larger than :data:`MAX_FRAME_PIXELS` are refused from the container's or the image file's
header, before a single frame is decoded (a 10000 x 10000 PNG of a few KB decodes to 300 MB);
every image of a folder is checked by its header before it is decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError, MissingFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_FOLDER_FPS = 25.0
#: the most pixels a frame may have: 4096 x 4096 (4K UHD and DCI 4K fit; 48 MB of RGB)
MAX_FRAME_PIXELS = 4096 * 4096


def check_frame_size(width: int, height: int, *, file: str | Path) -> None:
    """Refuse a frame of ``width`` x ``height`` px beyond :data:`MAX_FRAME_PIXELS` (from a header)."""
    if int(width) * int(height) > MAX_FRAME_PIXELS:
        raise InputError(f"frames of {int(width)} x {int(height)} px ({int(width) * int(height) / 1e6:.0f} "
                         "Mpx) are too large to decode", file=file, field="size",
                         expected=f"at most {MAX_FRAME_PIXELS / 1e6:.1f} Mpx per frame (4096 x 4096); "
                                  "downscale the video first")


def image_header_size(file: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header alone (Pillow opens lazily: no pixel is
    decoded); raises :class:`InputError` for a file that is not an image."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here
            with Image.open(file) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as err:  # over twice Pillow's own limit: larger than ours too
        raise InputError(f"frame too large to decode ({_error_line(err)})", file=file, field="size",
                         expected=f"at most {MAX_FRAME_PIXELS / 1e6:.1f} Mpx per frame (4096 x 4096)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot be read as an image ({_error_line(err)})", file=file,
                         field="pixels", expected="a jpg or png image") from None


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded integers numerically: ``img_2`` < ``img_10``."""
    return tuple(int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name))


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files (jpg/jpeg/png) directly inside ``folder``, naturally sorted."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def to_rgb_uint8(image: np.ndarray, *, file: str | Path) -> np.ndarray:
    """image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, uint8 -> (H, W, 3) uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"pixel type {image.dtype}", file=file, field="pixels", expected="8-bit images")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image of shape {image.shape}", file=file, field="pixels",
                         expected="grey, RGB or RGBA image")
    return np.ascontiguousarray(image)


class VideoReader:
    """Frames of a video file or an image folder as (H, W, 3) uint8 RGB arrays.

    ``fps`` is the container's rate for files (``fps`` overrides it when given) and ``fps`` or
    25 for folders. ``num_frames`` is exact: the stream's packets are counted, not taken from the
    container header, which may be wrong.
    """

    def __init__(self, path: str | Path, *, fps: float | None = None):
        self.path = Path(path)
        if fps is not None and not fps > 0:
            raise InputError(f"fps={fps}", file=self.path, field="fps", expected="a positive frame rate")
        if not self.path.exists():
            raise MissingFileError("video not found", file=self.path,
                                   expected="a video file (mp4/avi/...) or a folder of jpg/png frames")
        self._files: list[Path] | None = None
        if self.path.is_dir():
            self._files = list_frame_files(self.path)
            if not self._files:
                raise InputError("folder holds no frames", file=self.path, field="frames",
                                 expected=f"image files with suffix {'/'.join(IMAGE_SUFFIXES)}")
            first = self._load_image(self._files[0], size=None)
            self.size: tuple[int, int] = (int(first.shape[0]), int(first.shape[1]))
            self.num_frames: int = len(self._files)
            self.fps: float = float(DEFAULT_FOLDER_FPS if fps is None else fps)
        else:
            meta = self._probe()
            width, height = meta["size"]
            check_frame_size(width, height, file=self.path)
            self.size = (int(height), int(width))
            self.fps = float(meta.get("fps") or DEFAULT_FOLDER_FPS) if fps is None else float(fps)
            self.num_frames = self._count_frames()
            if self.num_frames == 0:
                raise InputError("video has no frames", file=self.path, field="frames",
                                 expected="at least one decodable frame")

    # -- file backend ------------------------------------------------------------------------
    def _probe(self) -> dict:
        import imageio_ffmpeg

        gen = imageio_ffmpeg.read_frames(str(self.path))
        try:
            meta = next(gen)
        except (OSError, RuntimeError, StopIteration) as err:
            raise InputError(f"cannot be read as a video ({_error_line(err)})", file=self.path,
                             field="video stream", expected="a video file ffmpeg can decode") from None
        finally:
            gen.close()
        if not meta.get("size") or min(meta["size"]) <= 0:
            raise InputError("no video stream", file=self.path, field="video stream",
                             expected="a file with a video stream")
        return meta

    def _count_frames(self) -> int:
        """Count the video packets (demuxed, not decoded: fast, and exact even when the header's frame
        count is wrong); decode and count when ffmpeg cannot stream-copy the file."""
        import imageio_ffmpeg

        try:
            return int(imageio_ffmpeg.count_frames_and_secs(str(self.path))[0])
        except (OSError, RuntimeError):
            return sum(1 for _ in self._file_frames())

    def _file_frames(self) -> Iterator[np.ndarray]:
        import imageio_ffmpeg

        height, width = self.size
        # the packet count (None while it is being counted by decoding): a damaged stream can decode
        # to more frames than it has packets, which would shift every frame after the damage
        announced = getattr(self, "num_frames", None)
        gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
        try:
            next(gen)  # metadata
            for decoded, raw in enumerate(gen, start=1):
                if announced is not None and decoded > announced:
                    raise InputError(f"decodes to more frames than the {announced} its stream holds "
                                     "(a damaged or inconsistent file)", file=self.path, field="frames",
                                     expected=f"{announced} decodable frames, one per video packet "
                                              "(re-encode or replace the video)")
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()  # writable
        except (OSError, RuntimeError) as err:
            raise InputError(f"decoding failed ({_error_line(err)})", file=self.path,
                             field="video stream", expected="a video file ffmpeg can decode") from None
        finally:
            gen.close()

    # -- folder backend ----------------------------------------------------------------------
    def _load_image(self, file: Path, *, size: tuple[int, int] | None) -> np.ndarray:
        import imageio.v3 as iio

        width, height = image_header_size(file)
        check_frame_size(width, height, file=file)
        if size is not None and (height, width) != tuple(size):
            raise InputError(f"frame of size {(height, width)}", file=file, field="size",
                             expected=f"every frame of {self.path} to be {size} (H, W)")
        try:
            image = iio.imread(file, plugin="pillow")
        except (OSError, ValueError, SyntaxError) as err:  # pillow's errors for a broken/unknown image
            raise InputError(f"cannot be read as an image ({_error_line(err)})", file=file,
                             field="pixels", expected="a jpg or png image") from None
        image = to_rgb_uint8(image, file=file)
        if size is not None and image.shape[:2] != size:
            raise InputError(f"frame of size {image.shape[:2]}", file=file, field="size",
                             expected=f"every frame of {self.path} to be {size} (H, W)")
        return image

    # -- public interface --------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield frames in order: each (H, W, 3) uint8 RGB."""
        if self._files is not None:
            for file in self._files:
                yield self._load_image(file, size=self.size)
        else:
            yield from self._file_frames()

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield frames ``start <= t < stop`` in order: each (H, W, 3) uint8 RGB (streamed)."""
        start, stop = self._check_range(start, stop)
        if self._files is not None:
            for file in self._files[start:stop]:
                yield self._load_image(file, size=self.size)
            return
        gen = self._file_frames()
        try:
            for t, frame in enumerate(gen):
                if t >= stop:
                    break
                if t >= start:
                    yield frame
        finally:
            gen.close()

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start <= t < stop`` -> (N, H, W, 3) uint8 RGB."""
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, *self.size, 3), dtype=np.uint8)
        for i, frame in enumerate(self.frames(start, stop)):
            out[i] = frame
        return out

    def _check_range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.num_frames if stop is None else stop
        if not 0 <= start <= stop <= self.num_frames:
            raise InputError(f"frame range [{start}, {stop})", file=self.path, field="frames",
                             expected=f"0 <= start <= stop <= {self.num_frames}")
        return int(start), int(stop)

    def close(self) -> None:
        """Nothing stays open between calls; kept for the context-manager protocol."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoReader({str(self.path)!r}, num_frames={self.num_frames}, "
                f"size={self.size}, fps={self.fps:g})")


def write_video(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], *, fps: float = 25.0,
                quality: int = 8, lossless: bool = False) -> Path:
    """frames: (N, H, W, 3) uint8 RGB -> video file at ``path`` (written atomically).

    mp4/mkv/mov/... use H.264 (yuv420p when H and W are even, else yuv444p so the size is kept
    exactly); ``lossless=True`` uses H.264 in RGB with qp 0 (``libx264rgb``), decoding back exactly. ``.avi``
    uses MJPEG. ``quality`` is imageio's 0-10 scale (10 best).
    """
    import imageio_ffmpeg

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"suffix '{path.suffix}'", file=path, field="suffix",
                         expected=f"one of {', '.join(VIDEO_SUFFIXES)}")
    if not fps > 0:
        raise InputError(f"fps={fps}", file=path, field="fps", expected="a positive frame rate")
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise InputError("no frames to write", file=path, field="frames", expected="at least one frame")
    height, width = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.shape != (height, width, 3):
            raise InputError(f"frame {i} has shape {f.shape} and dtype {f.dtype}", file=path,
                             field="frames", expected=f"uint8 frames of shape ({height}, {width}, 3)")
    even = height % 2 == 0 and width % 2 == 0
    kwargs: dict = {"fps": float(fps), "macro_block_size": 1, "ffmpeg_log_level": "error"}
    if suffix == ".avi" and not lossless:
        kwargs.update(codec="mjpeg", pix_fmt_out="yuvj444p", quality=quality)
    elif lossless:
        kwargs.update(codec="libx264rgb", pix_fmt_out="rgb24", quality=None,
                      output_params=["-qp", "0", "-preset", "ultrafast"])
    else:
        kwargs.update(codec="libx264", pix_fmt_out="yuv420p" if even else "yuv444p", quality=quality)
    with atomic_path(path, suffix=suffix) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), **kwargs)
        writer.send(None)  # start ffmpeg
        try:
            for f in frames:
                writer.send(np.ascontiguousarray(f))
        finally:
            writer.close()
    return path


def _error_line(err: BaseException) -> str:
    """The most telling line of an error: ffmpeg's last line (its banner comes first), else the only one."""
    text = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return text[-1][:200] if text else type(err).__name__
