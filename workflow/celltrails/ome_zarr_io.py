"""The workflow's image store: one OME-Zarr (NGFF 0.5) image with axes t, c, z, y, x.

Every stage reads images through this module. The store holds one resolution level, array
``0``, chunked so that one chunk is one channel of one frame's tile: detection and patch
extraction read tiles of single frames, never whole series. Metadata (axes with units, voxel
size as a scale transformation, channel names) is written with ome-zarr-py so that viewers
(napari, Fiji/MoBIE) and ome-zarr-py's own reader understand it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.writer import write_multiscales_metadata

AXES = ("t", "c", "z", "y", "x")
SPACE_UNIT = "micrometer"
TIME_UNIT = "minute"
DEFAULT_COLORS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")


@dataclass(frozen=True)
class ImageMeta:
    """What the workflow needs to know about an image besides its pixels."""

    shape: tuple[int, int, int, int, int]  # t, c, z, y, x
    dtype: np.dtype
    voxel_size: tuple[float, float, float]  # z, y, x in micrometres
    time_interval: float  # minutes
    channel_names: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def is_3d(self) -> bool:
        return self.shape[2] > 1


def default_chunks(shape: Sequence[int], tile_yx: int = 256, tile_z: int = 64) -> tuple[int, ...]:
    """One chunk = one channel of one frame, a z-slab of at most ``tile_z`` and a yx tile."""
    _, _, z, y, x = shape
    return (1, 1, min(z, tile_z), min(y, tile_yx), min(x, tile_yx))


def _axes_metadata() -> list[dict]:
    return [
        {"name": "t", "type": "time", "unit": TIME_UNIT},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": SPACE_UNIT},
        {"name": "y", "type": "space", "unit": SPACE_UNIT},
        {"name": "x", "type": "space", "unit": SPACE_UNIT},
    ]


def _omero_metadata(channel_names: Sequence[str], dtype: np.dtype) -> dict:
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    return {
        "channels": [
            {
                "label": name,
                "color": DEFAULT_COLORS[i % len(DEFAULT_COLORS)],
                "active": True,
                "window": {"min": 0.0, "max": top, "start": 0.0, "end": top},
            }
            for i, name in enumerate(channel_names)
        ]
    }


def create_image_store(
    path: str | Path,
    shape: Sequence[int],
    dtype: np.dtype | str,
    voxel_size: Sequence[float],
    time_interval: float,
    channel_names: Sequence[str],
    chunks: Sequence[int] | None = None,
    name: str | None = None,
) -> zarr.Array:
    """Create an empty t,c,z,y,x OME-Zarr image at ``path`` and return its level-0 array.

    Pixels are then written frame by frame (``array[t] = frame``) or by ``dask.array.store``,
    so memory stays bounded by what the caller holds, not by the series.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"image shape must be (t, c, z, y, x), got {shape}")
    if len(channel_names) != shape[1]:
        raise ValueError(f"{len(channel_names)} channel names for {shape[1]} channels")
    dtype = np.dtype(dtype)
    chunks = tuple(chunks) if chunks is not None else default_chunks(shape)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                               dimension_names=list(AXES))
    scale = [float(time_interval), 1.0, *(float(v) for v in voxel_size)]
    write_multiscales_metadata(
        group,
        datasets=[{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        fmt=FormatV05(),
        axes=_axes_metadata(),
        name=name or Path(path).name,
    )
    ome = dict(group.attrs["ome"])
    ome["omero"] = _omero_metadata(channel_names, dtype)
    group.attrs["ome"] = ome
    return array


def read_image_meta(path: str | Path) -> ImageMeta:
    """Read the metadata of a store written by :func:`create_image_store`."""
    group = zarr.open_group(str(path), mode="r")
    ome = group.attrs.get("ome", {})
    multiscale = ome["multiscales"][0]
    axes = tuple(axis["name"] for axis in multiscale["axes"])
    if axes != AXES:
        raise ValueError(f"{path}: expected axes {AXES}, found {axes}")
    dataset = multiscale["datasets"][0]
    scale = next(t["scale"] for t in dataset["coordinateTransformations"] if t["type"] == "scale")
    array = group[dataset["path"]]
    channels = ome.get("omero", {}).get("channels", [])
    names = tuple(c.get("label", f"ch{i}") for i, c in enumerate(channels)) or tuple(
        f"ch{i}" for i in range(array.shape[1]))
    return ImageMeta(
        shape=tuple(array.shape),
        dtype=np.dtype(array.dtype),
        voxel_size=(float(scale[2]), float(scale[3]), float(scale[4])),
        time_interval=float(scale[0]),
        channel_names=names,
    )


def open_image(path: str | Path) -> tuple[zarr.Array, ImageMeta]:
    """Open a workflow image store for reading: (level-0 array, metadata)."""
    meta = read_image_meta(path)
    group = zarr.open_group(str(path), mode="r")
    return group["0"], meta
