"""Atomic outputs: write under a temporary name in the same folder, rename when complete.

A job that is killed or fails leaves only a hidden temporary, never a file or store that
looks finished, so Snakemake (and a user) can trust whatever carries the final name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temporary_sibling(final: Path) -> Path:
    # Keep the suffixes (".ome.zarr", ".parquet") so writers that look at them still work.
    suffix = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    return final.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; move it to ``final`` only if the block succeeds.

    Works for files and for directories (OME-Zarr stores). An existing ``final`` is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to the temporary output for {final}")
    if final.exists() or final.is_symlink():
        # Two renames instead of rmtree-then-rename: the old result disappears only once the new
        # one is complete, and the final name never points at a half-written store.
        trash = _temporary_sibling(final)
        os.replace(final, trash)
        os.replace(tmp, final)
        _remove(trash)
    else:
        os.replace(tmp, final)
