"""Conversion of every layout to OME-Zarr, compared pixel for pixel, and the errors on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from celltrails.convert import convert_to_ome_zarr
from celltrails.errors import InputError
from celltrails.ome_zarr_io import open_image
from celltrails.sources import open_source
from conftest import blob_frames
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader


def read_back_with_ome_zarr(path: Path) -> tuple[np.ndarray, dict]:
    """Read a store with ome-zarr-py's own reader: an independent check of our metadata."""
    node = list(Reader(parse_url(str(path)))())[0]
    return np.asarray(node.data[0]), node.metadata


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_ctc_sequence_round_trip(ctc_root, tmp_path):
    seq = ctc_root / "Fluo-N2DH-SIM+" / "01"
    source = open_source(seq, "ctc", "sim01")
    out = convert_to_ome_zarr(source, tmp_path / "image.ome.zarr", voxel_size=(1.0, 0.125, 0.125),
                              time_interval=0.5, threads=2)
    data, meta = read_back_with_ome_zarr(out)
    assert data.shape == (65, 1, 1, 690, 628)
    assert [a["name"] for a in meta["axes"]] == ["t", "c", "z", "y", "x"]
    assert meta["coordinateTransformations"][0][0]["scale"] == [0.5, 1.0, 1.0, 0.125, 0.125]
    for t, path in enumerate(sorted(seq.glob("t*.tif"))):
        np.testing.assert_array_equal(data[t, 0, 0], tifffile.imread(path), err_msg=path.name)
    assert leftovers(tmp_path) == ["image.ome.zarr"]


def test_tiff_sequence_is_ordered_numerically(tiff_folder, tmp_path):
    folder, frames = tiff_folder
    out = convert_to_ome_zarr(open_source(folder, "tiff-sequence", "seq"), tmp_path / "out.ome.zarr")
    data, meta = read_back_with_ome_zarr(out)
    np.testing.assert_array_equal(data[:, 0, 0], frames)  # img_10 after img_9, not after img_1
    assert meta["channel_names"] == ["ch0"]


def test_tiff_stack_hyperstack_axes_are_reordered(tmp_path):
    tzcyx = blob_frames(5, (3, 2, 24, 30))  # t, z, c, y, x
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    out = convert_to_ome_zarr(open_source(path, "tiff-stack", "stack"), tmp_path / "out.ome.zarr",
                              channel_names=["nuclei", "reporter"])
    data, meta = read_back_with_ome_zarr(out)
    np.testing.assert_array_equal(data, tzcyx.transpose(0, 2, 1, 3, 4))
    assert meta["channel_names"] == ["nuclei", "reporter"]


def test_ome_zarr_source_in_other_axis_order(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    tzyx = blob_frames(4, (3, 20, 22))
    group = zarr.open_group(str(tmp_path / "src.ome.zarr"), mode="w", zarr_format=2)
    # NGFF 0.4 on zarr v2, no channel axis, with a pyramid: level 0 must be the one converted.
    write_image(tzyx, group, axes="tzyx", fmt=FormatV04(), scale={"t": 2.0, "z": 3.0, "y": 0.4, "x": 0.4})
    source = open_source(tmp_path / "src.ome.zarr", "ome-zarr", "zarrsrc")
    assert source.voxel_size == (3.0, 0.4, 0.4) and source.time_interval == 2.0
    out = convert_to_ome_zarr(source, tmp_path / "out.ome.zarr")
    array, meta = open_image(out)
    np.testing.assert_array_equal(array[:][:, 0], tzyx)
    assert meta.voxel_size == (3.0, 0.4, 0.4) and meta.is_3d


def test_conversion_replaces_an_old_store_atomically(tiff_folder, tmp_path):
    folder, frames = tiff_folder
    out = tmp_path / "image.ome.zarr"
    convert_to_ome_zarr(open_source(folder, "tiff-sequence", "seq"), out)
    convert_to_ome_zarr(open_source(folder, "tiff-sequence", "seq"), out, voxel_size=(1, 2, 2))
    assert open_image(out)[1].voxel_size == (1.0, 2.0, 2.0)
    assert leftovers(tmp_path) == ["frames", "image.ome.zarr"]


# --- bad input: a clear error naming the dataset and the file, and no partial store ---------------

def _assert_clean_failure(source_factory, tmp_path, *expected_in_message):
    out = tmp_path / "out" / "image.ome.zarr"
    with pytest.raises(InputError) as info:
        convert_to_ome_zarr(source_factory(), out)
    message = str(info.value)
    for expected in expected_in_message:
        assert expected in message, message
    assert not out.exists()
    assert not out.parent.exists() or leftovers(out.parent) == []
    return message


def test_frames_of_different_shapes(tiff_folder, tmp_path):
    folder, _ = tiff_folder
    tifffile.imwrite(folder / "img_7.tif", np.ones((41, 50), np.uint16))
    _assert_clean_failure(lambda: open_source(folder, "tiff-sequence", "mixed"), tmp_path,
                          "dataset 'mixed'", "img_7.tif", "differs")


def test_unreadable_tiff(tiff_folder, tmp_path):
    folder, _ = tiff_folder
    (folder / "img_3.tif").write_bytes(b"this is not a tiff")
    _assert_clean_failure(lambda: open_source(folder, "tiff-sequence", "broken"), tmp_path,
                          "dataset 'broken'", "img_3.tif", "cannot read TIFF")


def test_nan_frame(tmp_path):
    frames = blob_frames(4, (20, 20), dtype=np.float32)
    frames[2, 5, 5] = np.nan
    folder = tmp_path / "nan"
    folder.mkdir()
    for t, frame in enumerate(frames):
        tifffile.imwrite(folder / f"t{t:03d}.tif", frame)
    _assert_clean_failure(lambda: open_source(folder, "ctc", "nanset"), tmp_path, "dataset 'nanset'",
                          "t002.tif", "NaN")


def test_empty_frame(tiff_folder, tmp_path):
    folder, _ = tiff_folder
    tifffile.imwrite(folder / "img_5.tif", np.zeros((40, 50), np.uint16))
    _assert_clean_failure(lambda: open_source(folder, "tiff-sequence", "blank"), tmp_path,
                          "img_5.tif", "empty frame")


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(InputError, match="dataset 'gone'.*not found"):
        open_source(tmp_path / "nowhere", "tiff-sequence", "gone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="dataset 'void'.*no .tif"):
        open_source(tmp_path / "empty", "tiff-sequence", "void")
    with pytest.raises(InputError, match="no frames named tNNN.tif"):
        open_source(tmp_path / "empty", "ctc", "void")


def test_ctc_numbering_gap(tmp_path):
    folder = tmp_path / "01"
    folder.mkdir()
    for t in (0, 1, 3):
        tifffile.imwrite(folder / f"t{t:03d}.tif", blob_frames(1, (10, 10), seed=t)[0])
    with pytest.raises(InputError, match="without gaps"):
        open_source(folder, "ctc", "gappy")


def test_five_d_stack_without_axis_names_is_refused(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, blob_frames(3, (2, 2, 10, 10)))  # no axes metadata: 'QQQYX'
    with pytest.raises(InputError, match="dataset 'plain'.*plain.tif.*cannot tell the axis order"):
        open_source(path, "tiff-stack", "plain")


def test_stack_with_y_x_not_last_is_refused(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8),
                     photometric="rgb")
    with pytest.raises(InputError, match="rgb.tif.*last two axes must be Y, X"):
        open_source(path, "tiff-stack", "rgb")


def test_channel_names_must_match_channels(tiff_folder, tmp_path):
    folder, _ = tiff_folder
    with pytest.raises(InputError, match="2 channel names given"):
        convert_to_ome_zarr(open_source(folder, "tiff-sequence", "seq"), tmp_path / "x.ome.zarr",
                            channel_names=["a", "b"])
    assert not (tmp_path / "x.ome.zarr").exists()
