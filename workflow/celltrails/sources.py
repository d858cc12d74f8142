"""Readers for every source layout a dataset can be registered with, one frame at a time.

Each opener returns a :class:`FrameSource`: the series' geometry plus a function that reads
frame ``t`` as a (c, z, y, x) array, checked on the way (same shape as the others, no NaN, not
empty). Nothing here holds more than one frame, so conversion streams whatever the series length.

Layouts (``layout`` column of the dataset sheet):
- ``ctc``: a CTC sequence folder ``tNNN.tif`` numbered from 0;
- ``tiff-sequence``: a folder of per-frame TIFFs ordered by the last number in the name;
- ``tiff-stack``: one multi-page TIFF (ImageJ hyperstack or OME-TIFF with axes metadata);
- ``ome-zarr``: an OME-Zarr image (NGFF 0.4 or 0.5, any axis order that names its axes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

from celltrails.ctc import frame_number, list_frames
from celltrails.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
# tifffile names unlabelled axes Q (or I for image sequences); those are only unambiguous when
# there is a single one besides Y and X.
_GENERIC_AXES = {"Q", "I"}
_KNOWN_AXES = set("TCZYX")


@dataclass(frozen=True)
class FrameSource:
    """A time series that can be read frame by frame as (c, z, y, x) arrays."""

    dataset: str
    path: Path
    n_frames: int
    frame_shape: tuple[int, int, int, int]  # c, z, y, x
    dtype: np.dtype
    read_frame: Callable[[int], np.ndarray]
    voxel_size: tuple[float, float, float] | None = None  # z, y, x in micrometres, from metadata
    time_interval: float | None = None  # minutes, from metadata
    channel_names: tuple[str, ...] | None = None


def check_frame(frame: np.ndarray, expected_shape: tuple[int, ...], dataset: str, where: object) -> np.ndarray:
    """Reject frames a tracker cannot use: wrong shape, NaN or infinite values, or no signal."""
    if frame.shape != expected_shape:
        raise InputError(f"frame shape (c,z,y,x) {frame.shape} differs from the series' {expected_shape}; "
                         "all frames must have the same shape", dataset=dataset, path=where)
    if frame.size == 0:
        raise InputError("empty frame (no pixels)", dataset=dataset, path=where)
    if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
        raise InputError("frame contains NaN or infinite values", dataset=dataset, path=where)
    if frame.min() == frame.max():
        raise InputError(f"empty frame: every pixel equals {frame.flat[0]!r} (no signal)",
                         dataset=dataset, path=where)
    if frame.dtype == bool:
        frame = frame.astype(np.uint8)
    return frame


def _to_czyx(array: np.ndarray, axes: str, dataset: str, where: object) -> np.ndarray:
    """Reorder a frame with named axes (subset of C, Z, Y, X) to (c, z, y, x)."""
    for axis in "CZ":
        if axis not in axes:
            array = array[np.newaxis]
            axes = axis + axes
    return np.transpose(array, [axes.index(a) for a in "CZYX"])


def _frame_axes(axes: str, ndim: int, dataset: str, where: object) -> str:
    """Axis letters of one frame's TIFF: a lone unlabelled axis is z (a z-stack of pages)."""
    if not axes.endswith("YX"):
        raise InputError(f"unsupported TIFF axes '{axes}': frames must end with Y, X "
                         "(RGB/sample-interleaved images are not supported)", dataset=dataset, path=where)
    leading = axes[:-2]
    if len(leading) == 1 and leading in _GENERIC_AXES:
        return "ZYX"
    unknown = set(leading) - {"C", "Z"}
    if unknown or len(set(leading)) != len(leading):
        raise InputError(f"cannot tell the axis order of a {ndim}D frame with TIFF axes '{axes}'; "
                         "save frames as (z, y, x) or (c, z, y, x) with axes metadata "
                         "(ImageJ hyperstack or OME-TIFF)", dataset=dataset, path=where)
    return axes


def _read_tiff_frame(path: Path, dataset: str) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = _frame_axes(series.axes, len(series.shape), dataset, path)
            data = series.asarray()
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types for corrupt or foreign files
        raise InputError(f"cannot read TIFF: {type(err).__name__}: {err}", dataset=dataset, path=path) from err
    return _to_czyx(data, axes, dataset, path)


def _tiff_metadata(path: Path) -> tuple[tuple[float, float, float] | None, float | None]:
    """Voxel size (z, y, x) µm and frame interval (min) from ImageJ metadata, when present."""
    try:
        with tifffile.TiffFile(path) as tif:
            ij = tif.imagej_metadata or {}
            page = tif.pages.first
            xres = page.tags.get("XResolution")
            yres = page.tags.get("YResolution")
    except Exception:
        return None, None
    if not ij or xres is None or yres is None:
        return None, None
    unit = str(ij.get("unit", "")).lower()
    if unit not in ("micron", "um", "µm", "\\u00B5m"):
        return None, None
    x = xres.value[1] / xres.value[0] if xres.value[0] else None
    y = yres.value[1] / yres.value[0] if yres.value[0] else None
    z = float(ij.get("spacing", 1.0))
    interval = ij.get("finterval")
    if interval is not None and str(ij.get("tunit", "sec")).lower().startswith("s"):
        interval = float(interval) / 60.0
    voxel = (z, y, x) if x and y else None
    return voxel, (float(interval) if interval else None)


def _sequence_source(dataset: str, folder: Path, files: list[Path]) -> FrameSource:
    first = _read_tiff_frame(files[0], dataset)
    shape, dtype = first.shape, first.dtype
    check_frame(first, shape, dataset, files[0])

    def read_frame(t: int) -> np.ndarray:
        frame = _read_tiff_frame(files[t], dataset)
        if frame.dtype != dtype:
            raise InputError(f"pixel type {frame.dtype} differs from the first frame's {dtype}",
                             dataset=dataset, path=files[t])
        return check_frame(frame, shape, dataset, files[t])

    voxel, interval = _tiff_metadata(files[0])
    return FrameSource(dataset, folder, len(files), shape, dtype, read_frame, voxel, interval)


def open_ctc(path: str | Path, dataset: str) -> FrameSource:
    """A CTC sequence folder (``.../Fluo-N2DH-SIM+/02``): frames ``tNNN.tif`` from 0."""
    folder = Path(path)
    return _sequence_source(dataset, folder, list_frames(folder, prefix="t", dataset=dataset))


def open_tiff_sequence(path: str | Path, dataset: str) -> FrameSource:
    """A folder of per-frame TIFFs, ordered by the last number in each file name."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("folder of TIFF frames not found", dataset=dataset, path=folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise InputError("no .tif/.tiff files in the folder", dataset=dataset, path=folder)
    try:
        files.sort(key=frame_number)
    except ValueError as err:
        raise InputError(f"{err}: frames are ordered by the last number in their names",
                         dataset=dataset, path=folder) from err
    numbers = [frame_number(p) for p in files]
    duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicated:
        raise InputError(f"several files share frame numbers {duplicated[:5]}", dataset=dataset, path=folder)
    return _sequence_source(dataset, folder, files)


def _stack_axes(axes: str, shape: tuple[int, ...], dataset: str, path: Path) -> str:
    """Name the axes of a whole-series TIFF; the time axis must be identifiable."""
    if not axes.endswith("YX"):
        raise InputError(f"unsupported TIFF axes '{axes}': the last two axes must be Y, X",
                         dataset=dataset, path=path)
    leading = axes[:-2]
    generic = [a for a in leading if a in _GENERIC_AXES]
    if generic:
        if len(leading) == 1:
            return "TYX"  # a plain multi-page TIFF of 2D frames: pages are time points
        raise InputError(
            f"cannot tell the axis order of a {len(shape)}D stack (TIFF axes '{axes}', shape {shape}); "
            "save it as an ImageJ hyperstack or OME-TIFF with axes metadata (e.g. TZCYX)",
            dataset=dataset, path=path)
    unknown = set(leading) - _KNOWN_AXES
    if unknown or "T" not in leading or len(set(leading)) != len(leading):
        raise InputError(f"unsupported TIFF axes '{axes}': need a T axis plus optional C and Z "
                         f"(found {sorted(unknown) or 'no T axis'})", dataset=dataset, path=path)
    return axes


def open_tiff_stack(path: str | Path, dataset: str) -> FrameSource:
    """One multi-page TIFF holding the whole series, read lazily frame by frame."""
    path = Path(path)
    if not path.is_file():
        raise InputError("TIFF stack not found", dataset=dataset, path=path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
        array = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    except Exception as err:
        raise InputError(f"cannot read TIFF: {type(err).__name__}: {err}", dataset=dataset, path=path) from err
    axes = _stack_axes(axes, shape, dataset, path)
    t_axis = axes.index("T")
    frame_axes = axes.replace("T", "")
    n_frames = shape[t_axis]
    frame_shape = _to_czyx(np.empty(tuple(s for i, s in enumerate(shape) if i != t_axis), dtype=np.uint8),
                           frame_axes, dataset, path).shape

    def read_frame(t: int) -> np.ndarray:
        index = tuple(t if i == t_axis else slice(None) for i in range(len(shape)))
        frame = _to_czyx(np.asarray(array[index]), frame_axes, dataset, path)
        return check_frame(frame, frame_shape, dataset, f"{path} (frame {t})")

    voxel, interval = _tiff_metadata(path)
    return FrameSource(dataset, path, n_frames, frame_shape, np.dtype(array.dtype), read_frame, voxel, interval)


def open_ome_zarr(path: str | Path, dataset: str) -> FrameSource:
    """An OME-Zarr image; its axes are read from the NGFF metadata and reordered to t, c, z, y, x."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path = Path(path)
    location = parse_url(str(path)) if path.is_dir() else None
    if location is None:
        raise InputError("OME-Zarr image not found (or not a zarr store)", dataset=dataset, path=path)
    try:
        nodes = [n for n in Reader(location)() if n.load(Multiscales)]
    except Exception as err:
        raise InputError(f"cannot read OME-Zarr metadata: {type(err).__name__}: {err}",
                         dataset=dataset, path=path) from err
    if not nodes:
        raise InputError("no multiscale image in this OME-Zarr (plates and label-only stores are not "
                         "supported; point at the image group)", dataset=dataset, path=path)
    node = nodes[0]
    data = node.data[0]
    axes = "".join(a["name"] if isinstance(a, dict) else str(a) for a in node.metadata["axes"]).upper()
    if "T" not in axes or not axes.endswith("YX") or set(axes) - _KNOWN_AXES:
        raise InputError(f"OME-Zarr axes '{axes.lower()}' unsupported: need t, optional c and z, then y, x",
                         dataset=dataset, path=path)
    scale = next((t["scale"] for t in node.metadata["coordinateTransformations"][0] if t["type"] == "scale"),
                 [1.0] * len(axes))
    voxel = tuple(float(scale[axes.index(a)]) if a in axes else 1.0 for a in "ZYX")
    interval = float(scale[axes.index("T")])
    names = node.metadata.get("channel_names")
    t_axis = axes.index("T")
    frame_axes = axes.replace("T", "")
    frame_shape = _to_czyx(np.empty(tuple(s for i, s in enumerate(data.shape) if i != t_axis), np.uint8),
                           frame_axes, dataset, path).shape

    def read_frame(t: int) -> np.ndarray:
        index = tuple(t if i == t_axis else slice(None) for i in range(data.ndim))
        # Synchronous: this already runs inside a dask task, and a nested compute on the same
        # thread pool would wait for itself.
        frame = _to_czyx(data[index].compute(scheduler="synchronous"), frame_axes, dataset, path)
        return check_frame(frame, frame_shape, dataset, f"{path} (frame {t})")

    return FrameSource(dataset, path, data.shape[t_axis], frame_shape, np.dtype(data.dtype), read_frame,
                       voxel, interval, tuple(names) if names else None)


OPENERS: dict[str, Callable[[str | Path, str], FrameSource]] = {
    "ctc": open_ctc,
    "tiff-sequence": open_tiff_sequence,
    "tiff-stack": open_tiff_stack,
    "ome-zarr": open_ome_zarr,
}


def open_source(path: str | Path, layout: str, dataset: str) -> FrameSource:
    """Open a registered source by its layout name."""
    if layout not in OPENERS:
        raise InputError(f"unknown layout '{layout}' (one of {', '.join(OPENERS)})", dataset=dataset, path=path)
    return OPENERS[layout](path, dataset)
