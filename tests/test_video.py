"""VideoReader / write_video: round trips through mp4, avi and png folders, and clear errors."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.data.video import VideoReader, list_frame_files, natural_key, write_video


def smooth_frames(n: int = 6, h: int = 48, w: int = 64) -> np.ndarray:
    """(n, h, w, 3) uint8 frames with smooth gradients (codec friendly) that differ per frame."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        out[t, ..., 0] = (xx / w * 200 + 20 * t) % 256
        out[t, ..., 1] = yy / h * 200
        out[t, ..., 2] = 40 + 25 * t
    return out


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_file_round_trip(tmp_path, suffix):
    frames = smooth_frames()
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=30)
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]  # no temp file left behind
    with VideoReader(path) as video:
        assert video.num_frames == 6 and len(video) == 6
        assert video.size == (48, 64)
        assert video.fps == pytest.approx(30.0)
        got = np.stack(list(video))
    assert got.shape == frames.shape and got.dtype == np.uint8
    err = np.abs(got.astype(int) - frames.astype(int))
    assert err.mean() < 4.0
    # frames stay distinguishable: each decoded frame is closest to its own source frame
    dist = np.abs(got[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(6)).all()


def test_lossless_mp4_is_exact_and_read_range(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 16, 24, 3), dtype=np.uint8)
    video = VideoReader(write_video(tmp_path / "x.mp4", frames, fps=10, lossless=True))
    np.testing.assert_array_equal(video.read(), frames)
    np.testing.assert_array_equal(video.read(1, 4), frames[1:4])
    assert video.read(2, 2).shape == (0, 16, 24, 3)
    np.testing.assert_array_equal(np.stack(list(video.frames(3))), frames[3:])


def test_odd_size_mp4_keeps_size(tmp_path):
    frames = smooth_frames(n=3, h=15, w=21)
    video = VideoReader(write_video(tmp_path / "odd.mp4", frames, fps=25))
    assert video.size == (15, 21) and video.num_frames == 3


def test_png_folder_exact_natural_order_and_fps(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(12, 10, 8, 3), dtype=np.uint8)
    for t, f in enumerate(frames):  # unpadded names: lexical order would put 10, 11 before 2
        iio.imwrite(tmp_path / f"img_{t}.png", f)
    (tmp_path / "notes.txt").write_text("ignored")
    video = VideoReader(tmp_path)
    assert video.num_frames == 12 and video.size == (10, 8) and video.fps == 25.0
    np.testing.assert_array_equal(np.stack(list(video)), frames)
    np.testing.assert_array_equal(video.read(9, 12), frames[9:12])
    assert VideoReader(tmp_path, fps=50).fps == 50.0


def test_grey_and_rgba_frames_become_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 1] = 7
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "a1.png", grey)
    iio.imwrite(tmp_path / "a2.png", rgba)
    got = VideoReader(tmp_path).read()
    np.testing.assert_array_equal(got[0], np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(got[1], rgba[..., :3])


def test_natural_sort():
    names = ["f10.jpg", "f2.jpg", "F1.jpg", "f02b.png"]
    assert sorted(names, key=natural_key) == ["F1.jpg", "f2.jpg", "f02b.png", "f10.jpg"]


def test_list_frame_files_ignores_other_files(tmp_path):
    for name in ["b.JPG", "a.png", "c.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_frame_files(tmp_path)] == ["a.png", "b.JPG"]


def test_missing_video_names_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.mp4"):
        VideoReader(tmp_path / "nope.mp4")


def test_unreadable_video_names_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(InputError, match="bad.mp4"):
        VideoReader(bad)


def test_empty_video_file_and_empty_folder(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4"):
        VideoReader(empty)
    folder = tmp_path / "frames"
    folder.mkdir()
    with pytest.raises(InputError, match="no frames"):
        VideoReader(folder)


def test_zero_frame_container_is_refused(tmp_path):
    import subprocess

    import imageio_ffmpeg

    path = tmp_path / "zero.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=black:s=16x16:d=1", "-frames:v", "0", "-c:v", "libx264", str(path)], check=True)
    with pytest.raises(InputError, match="zero.mp4"):
        VideoReader(path)


def test_broken_image_and_size_mismatch_in_folder(tmp_path):
    iio.imwrite(tmp_path / "0.png", np.zeros((4, 4, 3), np.uint8))
    iio.imwrite(tmp_path / "1.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(InputError, match="1.png"):
        VideoReader(tmp_path).read()
    (tmp_path / "1.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="1.png"):
        list(VideoReader(tmp_path))


def test_read_range_checked(tmp_path):
    iio.imwrite(tmp_path / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="start <= stop"):
        VideoReader(tmp_path).read(0, 2)


def test_write_video_rejects_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        write_video(tmp_path / "x.gif", smooth_frames(2), fps=25)
    with pytest.raises(InputError, match="frame 1"):
        write_video(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)])
    with pytest.raises(InputError, match="no frames"):
        write_video(tmp_path / "x.mp4", [])
    assert list(tmp_path.iterdir()) == []
