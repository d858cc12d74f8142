"""Rendering of one synthetic frame: nuclei, state reporter, optics, background and camera noise.

Channel 0 (``nuclei``): each nucleus is an ellipsoid filled with ``nuclear_signal`` photons per
voxel times the cell's brightness factor, modulated by a chromatin-like texture (a periodic
smooth random tile sampled relative to the nucleus' centre, so the texture moves with it; grain
``texture_scale``, relative amplitude ``texture_amplitude``). Edges are partial-volume weighted.

Channel 1 (``state``): the reporter fills the nucleus at ``reporter_signal`` before the state
switch; over ``transition_frames`` from the onset it leaves the nucleus (down to
``reporter_nuclear_residual``) and fills a cytoplasmic shell of thickness
``reporter_shell_width`` around it (up to ``reporter_shell_level``).

Both channels are blurred by an anisotropic Gaussian PSF (``psf_sigma_z``, ``psf_sigma_xy`` in
µm, converted to voxels per axis), get a smooth uneven ``background`` that drifts slowly in time
(``background_variation``, ``background_period``), then camera noise: Poisson shot noise in
photons, times ``noise_gain``, plus ``camera_offset`` and Gaussian ``read_noise``, as uint16.

Each cell is rendered only inside its bounding box. The ground-truth markers paint every visible
cell's nucleus with its label; where nuclei touch, a voxel goes to the cell in whose ellipsoid it
lies deepest, and each centre voxel carries its own label (also for a tiny dying nucleus).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import gaussian_filter

from celltrails.synthetic.params import SyntheticParams
from celltrails.synthetic.simulate import STREAM_NOISE, STREAM_RENDER, FrameCells

TEXTURE_TILE = 32  # edge of the periodic texture tile, in texture grains
BACKGROUND_MODES = 3  # plane waves making up the uneven background
NOISE_BLOCK = 1 << 20  # voxels per independently seeded noise block (parallel, reproducible)
UINT16_MAX = float(np.iinfo(np.uint16).max)


def _map(workers: int, function: Callable, items: Iterable) -> list:
    """``map`` on a thread pool (numpy and scipy.ndimage release the GIL in the heavy parts)."""
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


class Renderer:
    """Turns simulated cells into (image, markers) for one frame; reproducible for a seed."""

    def __init__(self, p: SyntheticParams, workers: int = 1):
        self.p = p
        self.workers = max(1, int(workers))
        self.shape = tuple(int(n) for n in p.shape)
        self.voxel = np.array(p.voxel_size)
        # Voxel centres in µm along each axis (all 0 along z in 2D).
        self.coords = [(np.arange(n) * v).astype(np.float32) for n, v in zip(self.shape, self.voxel)]
        self.sigma = (p.psf_sigma_z / self.voxel[0] if p.is_3d else 0.0,
                      p.psf_sigma_xy / self.voxel[1], p.psf_sigma_xy / self.voxel[2])
        rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(STREAM_RENDER,)))
        tile = gaussian_filter(rng.standard_normal((TEXTURE_TILE,) * 3), 1.0, mode="wrap")
        self.tile = ((tile - tile.mean()) / tile.std()).astype(np.float32)
        extent = max(self.shape[1] * self.voxel[1], self.shape[2] * self.voxel[2])
        angle = rng.uniform(0, 2 * np.pi, BACKGROUND_MODES)
        wavelength = extent * rng.uniform(1.0, 2.0, BACKGROUND_MODES)
        self.bg_wave = np.stack([np.sin(angle), np.cos(angle)], axis=1) * (2 * np.pi / wavelength)[:, None]
        self.bg_phase = rng.uniform(0, 2 * np.pi, BACKGROUND_MODES)
        self.bg_speed = rng.choice([-1.0, 1.0], BACKGROUND_MODES) * 2 * np.pi / p.background_period

    # -- cells ------------------------------------------------------------------------------
    def _boxes(self, cells: FrameCells) -> tuple[np.ndarray, np.ndarray]:
        """Voxel bounding boxes [low, high) of each cell's nucleus plus reporter shell."""
        outer = cells.semi_axes * (1 + self.p.reporter_shell_width / cells.radius)[:, None]
        half = np.sqrt(np.einsum("nij,nj->ni", cells.rotation**2, outer**2)) + 0.5 * self.voxel
        low = np.floor((cells.position - half) / self.voxel).astype(np.int64)
        high = np.ceil((cells.position + half) / self.voxel).astype(np.int64) + 1
        if not self.p.is_3d:
            low[:, 0], high[:, 0] = 0, 1
        return np.clip(low, 0, self.shape), np.clip(high, 0, self.shape)

    def paint(self, cells: FrameCells) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free, unblurred photons (channel, z, y, x) float32 and uint16 markers."""
        p = self.p
        signal = np.zeros((2, *self.shape), np.float32)
        labels = np.zeros(self.shape, np.uint16)
        depth = np.ones(self.shape, np.float32)  # normalised radius of the marker's owner so far
        low, high = self._boxes(cells)
        inside = np.all(high > low, axis=1)
        # Quadratic form of each ellipsoid: x^T R diag(1/a^2) R^T x <= 1.
        forms = np.einsum("nij,nj,nkj->nik", cells.rotation, 1 / cells.semi_axes**2, cells.rotation)
        px = self.voxel[2]
        shell = p.reporter_shell_width / px
        nuclear = p.nuclear_signal * cells.intensity
        reporter = p.reporter_signal * cells.reporter
        reporter_nucleus = reporter * (1 - cells.relocation * (1 - p.reporter_nuclear_residual))
        reporter_shell = reporter * cells.relocation * p.reporter_shell_level
        for i in np.flatnonzero(inside):
            box = tuple(slice(a, b) for a, b in zip(low[i], high[i]))
            dz, dy, dx = (c[s] - np.float32(x) for c, s, x in zip(self.coords, box, cells.position[i]))
            m = forms[i].astype(np.float32)
            # q = plane(z, y) + dx * (slope(z, y) + m22 dx): only the last step spans the whole box.
            zz, yy = dz[:, None], dy[None, :]
            plane = m[0, 0] * zz * zz + 2 * m[0, 1] * zz * yy + m[1, 1] * yy * yy
            slope = 2 * m[0, 2] * zz + 2 * m[1, 2] * yy
            q = plane[..., None] + dx * (slope[..., None] + m[2, 2] * dx)
            radial = np.sqrt(q)
            ramp = (1 - radial) * np.float32(cells.radius[i] / px) + np.float32(0.5)
            occupancy = np.clip(ramp, 0, 1)
            texture = self._texture(dz, dy, dx, cells.texture_offset[i])
            signal[(0, *box)] += occupancy * (np.float32(nuclear[i]) * texture)
            signal[(1, *box)] += occupancy * np.float32(reporter_nucleus[i])
            if reporter_shell[i] > 0:
                ring = np.clip(ramp + np.float32(shell), 0, 1) - occupancy
                signal[(1, *box)] += ring * np.float32(reporter_shell[i])
            if cells.label[i] > 0:
                owner = radial < depth[box]
                labels[box][owner] = cells.label[i]
                depth[box][owner] = radial[owner]
        visible = cells.visible
        centres = np.rint(cells.position[visible] / self.voxel).astype(np.int64)
        labels[tuple(centres.T)] = cells.label[visible]
        return signal, labels

    def _texture(self, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Multiplicative nuclear texture (>= 0) for a box, attached to the nucleus' centre."""
        amplitude = self.p.texture_amplitude
        if amplitude == 0:
            return np.float32(1.0)
        iz, iy, ix = ((np.floor(d / self.p.texture_scale).astype(np.int64) + o) % TEXTURE_TILE
                      for d, o in zip((dz, dy, dx), offset))
        grain = self.tile[iz[:, None, None], iy[None, :, None], ix[None, None, :]]
        return np.maximum(1 + np.float32(amplitude) * grain, 0)

    # -- optics and camera --------------------------------------------------------------------
    def background(self, t: int) -> np.ndarray:
        """Smooth uneven background (y, x) in photons at frame t."""
        y, x = self.coords[1][:, None], self.coords[2][None, :]
        pattern = sum(np.cos(w[0] * y + w[1] * x + phase + speed * t)
                      for w, phase, speed in zip(self.bg_wave, self.bg_phase, self.bg_speed))
        level = self.p.background * (1 + self.p.background_variation * pattern / BACKGROUND_MODES)
        return np.maximum(level, 0).astype(np.float32)

    def optics(self, signal: np.ndarray, t: int) -> np.ndarray:
        """Expected photons per voxel: PSF-blurred signal plus background (float32)."""
        expected = np.empty_like(signal)
        _map(self.workers, lambda c: gaussian_filter(signal[c], self.sigma, output=expected[c], truncate=3.0),
             range(len(signal)))
        expected += self.background(t)
        return expected

    def camera(self, expected: np.ndarray, t: int) -> np.ndarray:
        """Grey levels: offset + gain x Poisson(photons) + Gaussian read noise, as uint16."""
        p = self.p
        flat = expected.reshape(-1)
        image = np.empty(flat.shape, np.uint16)

        def block(start: int) -> None:
            rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(STREAM_NOISE, t, start)))
            lam = flat[start:start + NOISE_BLOCK]
            grey = p.noise_gain * rng.poisson(lam).astype(np.float32) + np.float32(p.camera_offset)
            if p.read_noise > 0:
                grey += np.float32(p.read_noise) * rng.standard_normal(len(lam), np.float32)
            image[start:start + NOISE_BLOCK] = np.clip(np.rint(grey), 0, UINT16_MAX)

        _map(self.workers, block, range(0, len(flat), NOISE_BLOCK))
        return image.reshape(expected.shape)

    def render(self, cells: FrameCells) -> tuple[np.ndarray, np.ndarray]:
        """One frame: uint16 image (channel, z, y, x) and uint16 ground-truth markers (z, y, x)."""
        signal, labels = self.paint(cells)
        return self.camera(self.optics(signal, cells.t), cells.t), labels
