"""Population dynamics of a synthetic series, and its exact tracking ground truth.

Cells live in a simulated volume larger than the field of view (the field plus ``margin`` in y
and x, and ``margin_z`` above and below it in 3D, where cells are confined to that z range), in
micrometres, with voxel ``i`` of the field centred at ``i * voxel_size``. Each frame, every cell moves by

* its own velocity, an Ornstein-Uhlenbeck process (RMS ``speed``, correlation ``persistence``),
* the global ``drift``,
* a smooth tissue flow: ``deformation_modes`` sinusoids of wavelength ``deformation_scale``
  whose amplitudes oscillate with periods around ``deformation_period`` (RMS
  ``deformation_amplitude``), so neighbours move together and the tissue deforms non-rigidly,

followed by soft repulsion between overlapping nuclei (``repulsion``; a cKDTree finds
contacts), so dense nuclei rarely overlap. Nuclei are ellipsoids (equivalent radius
``nucleus_radius_mean`` ± ``nucleus_radius_sd``, axis ratio up to ``elongation_max``, random
orientation) that grow from half their volume at birth to full size.

Life cycle: a cell divides after its cycle length (``cell_cycle_mean`` ± ``cell_cycle_sd``
frames); during its last ``mitosis_frames`` frames its nucleus rounds up, condenses and
brightens (``mitosis_brightness``). The two daughters appear on either side of the mother's
position, moving apart. A cell starts dying with ``death_probability`` per frame, then shrinks
and brightens (``death_brightness``) for ``death_frames`` frames and disappears. Cells enter
through the outer half of the margin (``entry_rate`` per frame) and are removed once they
leave the simulated volume; the population is capped at ``capacity`` times its initial size
(cells then postpone division and none enter). A cell's fluorescence may fade
(``fade_probability`` per frame) for ``fade_duration`` frames, following ``1 - sin`` down to
zero and back. A founder cell switches state with probability ``state_fraction`` at an onset
frame drawn from ``state_onset``; daughters inherit the onset.

Ground truth (Cell Tracking Challenge convention). A cell is visible in a frame iff its
rounded centre lies inside the field and its fluorescence factor is at least
``visibility_threshold``. Each uninterrupted visible run of a cell is one track with its own
label. A track's parent is the mother's last label for a daughter (when the lineage was last
seen fading or dividing, not leaving the field), and the cell's own previous label after a
fade gap; a cell re-entering the field after leaving it starts an unlinked track. Two visible
cells never share a centre voxel: the rare later cell of such a pair is moved to the nearest
free voxel centre, so every track owns its marker's centre.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from celltrails.synthetic.params import SyntheticParams

MAX_LABEL = int(np.iinfo(np.uint16).max)  # CTC markers are uint16
RELAXATION_PASSES = 2  # repulsion passes per frame
INITIAL_RELAXATION_PASSES = 30  # to spread the random initial positions into a packing
CONTACT = 1.05  # nuclei repel when closer than CONTACT x the sum of their radii
MITOTIC_CONDENSATION = 0.85  # radius factor reached at the last mitotic frame
APOPTOTIC_SHRINK = 0.5  # radius factor reached at the last frame of a dying cell
DAUGHTER_SPEED = 0.25  # initial speed of each daughter away from the other, in mother radii/frame
MIN_RADIUS_FRACTION = 0.3  # smallest nucleus, relative to the mean radius (clips the normal draw)
INHERITED_BRIGHTNESS_SD = 0.1  # log-normal sigma between a mother's and a daughter's brightness

# Stream numbers of numpy SeedSequence(seed, spawn_key=(stream, ...)): independent, reproducible.
STREAM_POPULATION, STREAM_FLOW, STREAM_RENDER, STREAM_NOISE = range(4)


@dataclass(frozen=True)
class FrameCells:
    """All simulated cells at one frame (arrays indexed by cell), inside the field or not.

    Positions and lengths are in µm; ``label`` is the CTC label (0 = not in the ground truth
    this frame), ``parent`` the parent label of that track (-1 = none), ``onset`` the state
    onset frame (-1 = never switches).
    """

    t: int
    position: np.ndarray  # (n, 3) z, y, x
    semi_axes: np.ndarray  # (n, 3) semi-axes along the nucleus' own axes
    rotation: np.ndarray  # (n, 3, 3) columns: the nucleus' axes in z, y, x
    radius: np.ndarray  # (n,) equivalent radius
    intensity: np.ndarray  # (n,) nuclear-marker factor: brightness x mitosis/death x fade
    reporter: np.ndarray  # (n,) reporter factor: brightness x fade
    relocation: np.ndarray  # (n,) 0 = reporter nuclear, 1 = fully relocated to the cytoplasm
    texture_offset: np.ndarray  # (n, 3) int, where the nucleus samples the texture tile
    label: np.ndarray
    parent: np.ndarray
    onset: np.ndarray

    @property
    def visible(self) -> np.ndarray:
        return self.label > 0

    @property
    def state(self) -> np.ndarray:
        """0/1 per cell: 1 from the onset frame on."""
        return ((self.onset >= 0) & (self.t >= self.onset)).astype(np.int8)


class _Flow:
    """Smooth, slowly changing tissue-flow velocity field (µm per frame)."""

    def __init__(self, p: SyntheticParams, rng: np.random.Generator, active: np.ndarray):
        n = p.deformation_modes
        wave = _random_directions(rng, n, active) * (2 * np.pi / p.deformation_scale)
        self.wave, self.direction = wave, _random_directions(rng, n, active)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.omega = 2 * np.pi / p.deformation_period * rng.uniform(0.5, 1.5, n)
        self.time_phase = rng.uniform(0, 2 * np.pi, n)
        # Each term has RMS 1/2 over space and time; this makes the sum's RMS the amplitude.
        self.scale = p.deformation_amplitude * 2 / np.sqrt(n)

    def __call__(self, position: np.ndarray, t: int) -> np.ndarray:
        if self.scale == 0:
            return np.zeros_like(position)
        weights = np.sin(position @ self.wave.T + self.phase) * np.cos(self.omega * t + self.time_phase)
        return self.scale * weights @ self.direction


def _random_directions(rng: np.random.Generator, n: int, active: np.ndarray) -> np.ndarray:
    """Unit vectors uniformly distributed over the active axes (y, x in 2D)."""
    v = rng.standard_normal((n, 3)) * active
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _relax(position: np.ndarray, radius: np.ndarray, strength: float, passes: int) -> None:
    """Push overlapping nuclei apart in place (each pass removes ``strength`` of each overlap)."""
    if strength == 0 or len(position) < 2:
        return
    for _ in range(passes):
        pairs = cKDTree(position).query_pairs(2 * CONTACT * radius.max(), output_type="ndarray")
        if not len(pairs):
            return
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # fixed order: reproducible sums
        i, j = pairs[:, 0], pairs[:, 1]
        delta = position[i] - position[j]
        distance = np.linalg.norm(delta, axis=1)
        overlap = CONTACT * (radius[i] + radius[j]) - distance
        touching = overlap > 0
        i, j, delta, distance, overlap = i[touching], j[touching], delta[touching], distance[touching], \
            overlap[touching]
        unit = np.where(distance[:, None] > 0, delta / np.maximum(distance, 1e-12)[:, None], [0.0, 0.0, 1.0])
        push = (strength * overlap / 2)[:, None] * unit
        shift = np.zeros_like(position)
        np.add.at(shift, i, push)
        np.add.at(shift, j, -push)
        position += shift


class Population:
    """The simulated cells: arrays with one row per living cell, advanced frame by frame."""

    FIELDS = ("position", "velocity", "size", "ratios", "rotation", "brightness", "reporter_brightness",
              "texture_offset", "age", "cycle", "dying", "fade_start", "fade_length", "onset", "label",
              "parent", "anchor")

    def __init__(self, p: SyntheticParams):
        self.p = p
        self.t = 0
        self.rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(STREAM_POPULATION,)))
        self.active = np.array([1.0 if p.is_3d else 0.0, 1.0, 1.0])
        self.voxel = np.array(p.voxel_size, dtype=float)
        self.shape = np.array(p.shape)
        # The field covers voxels 0..n-1, i.e. [-v/2, (n - 1/2) v) on each axis (z = 0 in 2D).
        self.field_low = -0.5 * self.voxel * self.active
        self.field_high = (self.shape - 0.5) * self.voxel * self.active
        self.margin = np.array([p.margin_z, p.margin, p.margin]) * self.active
        self.low = self.field_low - self.margin
        self.high = self.field_high + self.margin
        self.flow = _Flow(p, np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(STREAM_FLOW,))),
                          self.active)
        self.next_label = 1
        self.cells = {name: np.zeros((0, *shape), dtype) for name, shape, dtype in self._layout()}
        self._seed_population()
        self.max_cells = max(1, int(np.ceil(p.capacity * self.n)))

    # -- arrays ------------------------------------------------------------------------------
    @staticmethod
    def _layout() -> list[tuple[str, tuple, type]]:
        vec, mat = (3,), (3, 3)
        shapes = {"position": vec, "velocity": vec, "ratios": vec, "rotation": mat, "texture_offset": vec}
        ints = {"texture_offset", "age", "cycle", "dying", "fade_start", "fade_length", "onset", "label",
                "parent", "anchor"}
        return [(name, shapes.get(name, ()), np.int64 if name in ints else np.float64)
                for name in Population.FIELDS]

    @property
    def n(self) -> int:
        return len(self.cells["position"])

    def _append(self, new: dict[str, np.ndarray]) -> None:
        for name in self.FIELDS:
            self.cells[name] = np.concatenate([self.cells[name], new[name].astype(self.cells[name].dtype)])

    def _keep(self, keep: np.ndarray) -> None:
        for name in self.FIELDS:
            self.cells[name] = self.cells[name][keep]

    # -- new cells ---------------------------------------------------------------------------
    def _cycle_lengths(self, n: int) -> np.ndarray:
        p = self.p
        cycle = np.rint(self.rng.normal(p.cell_cycle_mean, p.cell_cycle_sd, n)).astype(np.int64)
        return np.maximum(p.mitosis_frames + 1, cycle)

    def _shapes(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target equivalent radius, semi-axis ratios (product 1) and orientation of n nuclei."""
        p, rng = self.p, self.rng
        size = rng.normal(p.nucleus_radius_mean, p.nucleus_radius_sd, n)
        size = np.maximum(size, MIN_RADIUS_FRACTION * p.nucleus_radius_mean)
        elongation = rng.uniform(1.0, p.elongation_max, n)
        if p.is_3d:
            ratios = np.stack([elongation ** (2 / 3), elongation ** (-1 / 3), elongation ** (-1 / 3)], axis=1)
            quaternions = rng.standard_normal((n, 4))
            rotation = Rotation.from_quat(quaternions).as_matrix() if n else np.zeros((0, 3, 3))
        else:  # ellipses in the yx plane: rotation about z only
            ratios = np.stack([np.ones(n), elongation ** 0.5, elongation ** -0.5], axis=1)
            angle = rng.uniform(0, np.pi, n)
            rotation = np.zeros((n, 3, 3))
            rotation[:, 0, 0] = 1
            rotation[:, 1, 1], rotation[:, 1, 2] = np.cos(angle), -np.sin(angle)
            rotation[:, 2, 1], rotation[:, 2, 2] = np.sin(angle), np.cos(angle)
        return size, ratios, rotation.reshape(n, 3, 3)

    def _new_cells(self, position: np.ndarray) -> dict[str, np.ndarray]:
        """Founder cells (initial or entering) at the given positions, at a random cycle phase."""
        p, rng, n = self.p, self.rng, len(position)
        size, ratios, rotation = self._shapes(n)
        cycle = self._cycle_lengths(n)
        switches = rng.random(n) < p.state_fraction
        onset = np.where(switches, rng.integers(p.state_onset[0], p.state_onset[1] + 1, n), -1)
        return {
            "position": position,
            "velocity": rng.standard_normal((n, 3)) * self.active * self._speed_sd(),
            "size": size, "ratios": ratios, "rotation": rotation,
            "brightness": rng.lognormal(0, p.brightness_sd, n),
            "reporter_brightness": rng.lognormal(0, p.brightness_sd, n),
            "texture_offset": rng.integers(0, 1 << 16, (n, 3)),
            "age": np.floor(rng.random(n) * (cycle - p.mitosis_frames)), "cycle": cycle,
            "dying": np.full(n, -1), "fade_start": np.full(n, -1), "fade_length": np.zeros(n),
            "onset": onset, "label": np.zeros(n), "parent": np.full(n, -1), "anchor": np.zeros(n),
        }

    def _speed_sd(self) -> float:
        return self.p.speed / np.sqrt(self.active.sum())

    def _uniform(self, n: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return (low + self.rng.random((n, 3)) * (high - low)) * self.active

    def _in_box(self, position: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        axes = self.active > 0
        return np.all((position[:, axes] >= low[axes]) & (position[:, axes] < high[axes]), axis=1)

    def _outside(self, n: int, inner_low: np.ndarray, inner_high: np.ndarray) -> np.ndarray:
        """n positions uniform in the simulated volume but outside the given inner box."""
        found = np.zeros((0, 3))
        while len(found) < n:
            batch = self._uniform(max(64, 8 * n), self.low, self.high)
            found = np.concatenate([found, batch[~self._in_box(batch, inner_low, inner_high)]])
        return found[:n]

    def _seed_population(self) -> None:
        p = self.p
        extent = (self.field_high - self.field_low)[self.active > 0]
        field_volume = np.prod(extent)
        band_volume = np.prod(extent + 2 * self.margin[self.active > 0]) - field_volume
        n_band = round(p.n_cells * band_volume / field_volume)
        position = np.concatenate([self._uniform(p.n_cells, self.field_low, self.field_high),
                                   self._outside(n_band, self.field_low, self.field_high)])
        self._append(self._new_cells(position))
        _relax(self.cells["position"], self.cells["size"], p.repulsion, INITIAL_RELAXATION_PASSES)
        self._confine_z()
        self._keep(self._in_box(self.cells["position"], self.low, self.high))

    # -- per-frame geometry ------------------------------------------------------------------
    def _mitosis_progress(self) -> np.ndarray:
        """0 outside mitosis, rising to 1 at the last frame before division."""
        c, m = self.cells, self.p.mitosis_frames
        return np.clip((c["age"] - (c["cycle"] - m) + 1) / m, 0, 1)

    def _death_progress(self) -> np.ndarray:
        dying = self.cells["dying"]
        return np.where(dying >= 0, (dying + 1) / self.p.death_frames, 0.0)

    def _fade_factor(self) -> np.ndarray:
        c = self.cells
        k = self.t - c["fade_start"]
        fading = (c["fade_start"] >= 0) & (k < c["fade_length"])
        return np.where(fading, 1 - np.sin(np.pi * (k + 1) / (c["fade_length"] + 1)), 1.0)

    def _radius(self) -> np.ndarray:
        """Current equivalent radius: growth from half volume, mitotic and apoptotic shrinking."""
        c, p = self.cells, self.p
        birth = 0.5 ** (1 / self.active.sum())
        growth = birth + (1 - birth) * np.clip(c["age"] / (c["cycle"] - p.mitosis_frames), 0, 1)
        mitosis = 1 - (1 - MITOTIC_CONDENSATION) * self._mitosis_progress()
        death = 1 - (1 - APOPTOTIC_SHRINK) * self._death_progress()
        return c["size"] * growth * mitosis * death

    # -- dynamics ----------------------------------------------------------------------------
    def _move(self) -> None:
        p, c, rng = self.p, self.cells, self.rng
        rho = p.persistence
        noise = rng.standard_normal((self.n, 3)) * self.active * self._speed_sd()
        c["velocity"] = rho * c["velocity"] + np.sqrt(1 - rho**2) * noise
        flow = self.flow(c["position"], self.t)
        c["position"] += (c["velocity"] + np.asarray(p.drift) + flow) * self.active
        _relax(c["position"], self._radius(), p.repulsion, RELAXATION_PASSES)
        self._confine_z()

    def _confine_z(self) -> None:
        """Keep cells within the simulated z range: the sample is a slab, cells leave only in y, x."""
        z = self.cells["position"][:, 0]
        np.clip(z, self.low[0], self.high[0], out=z)

    def _divide(self, mothers: np.ndarray) -> dict[str, np.ndarray]:
        """Two daughters per mother, on either side of it along a random axis, moving apart."""
        c, rng, n = self.cells, self.rng, int(mothers.sum())
        radius = self._radius()[mothers]
        axis = _random_directions(rng, n, self.active)
        offset = 0.5 * radius[:, None] * axis
        size, ratios, rotation = self._shapes(2 * n)

        def pair(values: np.ndarray) -> np.ndarray:  # first daughters, then second daughters
            return np.concatenate([values, values])

        def inherited(name: str) -> np.ndarray:
            return pair(c[name][mothers]) * rng.lognormal(0, INHERITED_BRIGHTNESS_SD, 2 * n)

        return {
            "position": np.concatenate([c["position"][mothers] + offset, c["position"][mothers] - offset]),
            "velocity": np.concatenate([axis, -axis]) * DAUGHTER_SPEED * pair(radius)[:, None],
            "size": size, "ratios": ratios, "rotation": rotation,
            "brightness": inherited("brightness"), "reporter_brightness": inherited("reporter_brightness"),
            "texture_offset": rng.integers(0, 1 << 16, (2 * n, 3)),
            "age": np.zeros(2 * n), "cycle": self._cycle_lengths(2 * n),
            "dying": np.full(2 * n, -1), "fade_start": np.full(2 * n, -1), "fade_length": np.zeros(2 * n),
            "onset": pair(c["onset"][mothers]), "label": np.zeros(2 * n), "parent": np.full(2 * n, -1),
            "anchor": pair(np.where(c["label"][mothers] > 0, c["label"][mothers], c["anchor"][mothers])),
        }

    def _life_cycle(self) -> None:
        p, c, rng = self.p, self.cells, self.rng
        c["age"] += 1
        c["dying"][c["dying"] >= 0] += 1
        crowded = self.n >= self.max_cells
        entering_mitosis = c["age"] == c["cycle"] - p.mitosis_frames
        if crowded and entering_mitosis.any():  # cycle arrest: postpone division
            c["cycle"][entering_mitosis] += self._cycle_lengths(int(entering_mitosis.sum())) // 4 + 1
        mothers = (c["age"] >= c["cycle"]) & (c["dying"] < 0)
        daughters = self._divide(mothers)
        calm = (c["dying"] < 0) & (self._mitosis_progress() == 0)
        c["dying"][calm & (rng.random(self.n) < p.death_probability)] = 0
        fade_over = (c["fade_start"] >= 0) & (self.t + 1 - c["fade_start"] >= c["fade_length"])
        c["fade_start"][fade_over] = -1
        starts = (c["fade_start"] < 0) & (rng.random(self.n) < p.fade_probability)
        c["fade_start"][starts] = self.t + 1
        c["fade_length"][starts] = rng.integers(p.fade_duration[0], p.fade_duration[1] + 1, int(starts.sum()))
        self._keep(~mothers & ~(c["dying"] >= p.death_frames))
        self._append(daughters)

    def _enter(self) -> None:
        n = self.rng.poisson(self.p.entry_rate)
        if n and self.n < self.max_cells:
            inner = self.margin / 2
            self._append(self._new_cells(self._outside(n, self.field_low - inner, self.field_high + inner)))

    def step(self) -> None:
        """Advance the population from frame t to t + 1."""
        self._move()
        self._life_cycle()
        self._enter()
        self._keep(self._in_box(self.cells["position"], self.low, self.high))
        self.t += 1

    # -- ground truth ------------------------------------------------------------------------
    def _centre_voxels(self) -> np.ndarray:
        return np.rint(self.cells["position"] / self.voxel).astype(np.int64)

    def _separate_centres(self, visible: np.ndarray) -> None:
        """Move a visible cell whose centre voxel another visible cell already holds to the
        nearest free voxel centre in the field (rare: nuclei repel)."""
        voxels = self._centre_voxels()
        index = np.flatnonzero(visible)
        flat = np.ravel_multi_index(voxels[index].T, self.shape)
        _, first = np.unique(flat, return_index=True)
        if len(first) == len(index):
            return
        taken = set(flat[first].tolist())
        ranges = [(-1, 0, 1) if self.p.is_3d else (0,), (-1, 0, 1), (-1, 0, 1)]
        offsets = sorted(itertools.product(*ranges), key=lambda o: (np.dot(o, o), o))[1:]
        for cell in np.sort(index[np.setdiff1d(np.arange(len(index)), first)]):
            for offset in offsets:
                voxel = voxels[cell] + offset
                if np.all((voxel >= 0) & (voxel < self.shape)):
                    key = int(np.ravel_multi_index(voxel, self.shape))
                    if key not in taken:
                        taken.add(key)
                        self.cells["position"][cell] = voxel * self.voxel
                        break
            else:
                raise RuntimeError(f"frame {self.t}: no free centre voxel near a crowded cell")

    def assign_labels(self) -> None:
        """Decide who is visible this frame and give new visible runs their labels."""
        c, p = self.cells, self.p
        voxels = self._centre_voxels()
        in_field = np.all((voxels >= 0) & (voxels < self.shape), axis=1)
        visible = in_field & (self._fade_factor() >= p.visibility_threshold)
        self._separate_centres(visible)
        ended = ~visible & (c["label"] > 0)
        c["anchor"][ended] = c["label"][ended]
        c["label"][~visible] = 0
        c["anchor"][~in_field] = 0  # leaving the field breaks the lineage link
        new = np.flatnonzero(visible & (c["label"] == 0))
        c["label"][new] = self.next_label + np.arange(len(new))
        c["parent"][new] = np.where(c["anchor"][new] > 0, c["anchor"][new], -1)
        self.next_label += len(new)

    def snapshot(self) -> FrameCells:
        """The current frame: ground-truth labels are assigned here, so call once per frame."""
        self.assign_labels()
        c, p = self.cells, self.p
        fade = self._fade_factor()
        mitosis = self._mitosis_progress()
        ratios = c["ratios"] ** (1 - mitosis)[:, None]  # mitotic rounding
        radius = self._radius()
        intensity = (c["brightness"] * fade * (1 + (p.mitosis_brightness - 1) * mitosis)
                     * (1 + (p.death_brightness - 1) * self._death_progress()))
        relocation = np.where(c["onset"] >= 0,
                              np.clip((self.t - c["onset"] + 1) / p.transition_frames, 0, 1), 0.0)
        return FrameCells(
            t=self.t, position=c["position"].copy(), semi_axes=radius[:, None] * ratios,
            rotation=c["rotation"].copy(), radius=radius, intensity=intensity,
            reporter=c["reporter_brightness"] * fade, relocation=relocation,
            texture_offset=c["texture_offset"].copy(), label=c["label"].copy(),
            parent=c["parent"].copy(), onset=c["onset"].copy())


def simulate(params: SyntheticParams) -> Iterator[FrameCells]:
    """Yield the cells of frames 0..n_frames-1, simulating one step between frames."""
    population = Population(params)
    for t in range(params.n_frames):
        if t:
            population.step()
        yield population.snapshot()


def count_tracks(params: SyntheticParams) -> int:
    """Number of ground-truth tracks of the series: its population dynamics without rendering
    (a few percent of the generation time), to refuse a recipe before writing anything."""
    population = Population(params)
    for t in range(params.n_frames):
        if t:
            population.step()
        population.assign_labels()
    return population.next_label - 1
