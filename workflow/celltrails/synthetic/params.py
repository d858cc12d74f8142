"""Recipe of a synthetic series: a YAML file validated against ``schemas/synthetic.schema.yaml``.

The schema is the single reference for every parameter (meaning, unit, range, default); this
module only turns a validated, default-filled mapping into a frozen :class:`SyntheticParams`
and adds the checks that involve several keys. Errors name the key and the recipe file.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from celltrails.errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "synthetic.schema.yaml"


@dataclass(frozen=True)
class SyntheticParams:
    """Resolved recipe; see the schema for each field's meaning and unit."""

    seed: int
    n_frames: int
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    time_interval: float
    margin: float
    margin_z: float
    n_cells: int
    nucleus_radius_mean: float
    nucleus_radius_sd: float
    elongation_max: float
    texture_amplitude: float
    texture_scale: float
    brightness_sd: float
    speed: float
    persistence: float
    drift: tuple[float, float, float]
    deformation_amplitude: float
    deformation_scale: float
    deformation_modes: int
    deformation_period: float
    repulsion: float
    capacity: float
    cell_cycle_mean: float
    cell_cycle_sd: float
    mitosis_frames: int
    mitosis_brightness: float
    death_probability: float
    death_frames: int
    death_brightness: float
    entry_rate: float
    fade_probability: float
    fade_duration: tuple[int, int]
    visibility_threshold: float
    state_fraction: float
    state_onset: tuple[int, int]
    transition_frames: int
    reporter_signal: float
    reporter_shell_width: float
    reporter_shell_level: float
    reporter_nuclear_residual: float
    nuclear_signal: float
    background: float
    background_variation: float
    background_period: float
    psf_sigma_z: float
    psf_sigma_xy: float
    noise_gain: float
    read_noise: float
    camera_offset: float

    @property
    def is_3d(self) -> bool:
        return self.shape[0] > 1

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready mapping (lists, not tuples) that :func:`load_params` reads back."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


def _set_defaults(validator_class: type) -> type:
    """A validator class that also fills each missing property with its schema default."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema) -> Iterator[ValidationError]:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


_DefaultFillingValidator = _set_defaults(Draft202012Validator)


@cache
def load_schema() -> dict:
    """The recipe schema (read once)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _describe(error: ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        return "; ".join(f"key '{key}': unknown parameter (a typo?)" for key in unknown)
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"key '{key}': {error.message}"


def _convert(name: str, value: Any) -> Any:
    """YAML/JSON value -> the field's Python type (lists become tuples, 2 -> 2.0 for floats)."""
    hint = get_type_hints(SyntheticParams)[name]
    if get_origin(hint) is tuple:
        return tuple(get_args(hint)[0](v) for v in value)
    return hint(value)


def _cross_checks(p: SyntheticParams) -> list[str]:
    problems = []
    if p.state_onset[0] > p.state_onset[1]:
        problems.append("key 'state_onset': min is larger than max")
    if p.fade_duration[0] > p.fade_duration[1]:
        problems.append("key 'fade_duration': min is larger than max")
    if p.entry_rate > 0 and p.margin == 0:
        problems.append("key 'entry_rate': cells enter through the margin, so margin must be > 0")
    if p.cell_cycle_mean <= p.mitosis_frames:
        problems.append("key 'cell_cycle_mean': must be longer than mitosis_frames")
    if min(p.shape[1:]) < 8:
        problems.append("key 'shape': y and x must be at least 8 pixels")
    return problems


def params_from_mapping(data: Mapping[str, Any], source: str | Path | None = None) -> SyntheticParams:
    """Validate a recipe mapping, fill defaults and build the parameters.

    ``source`` names the recipe in errors (the file the mapping came from).
    """
    if not isinstance(data, Mapping):
        raise InputError("a synthetic recipe must be a mapping of parameter: value", path=source)
    resolved = copy.deepcopy(dict(data))
    errors = sorted(_DefaultFillingValidator(load_schema()).iter_errors(resolved),
                    key=lambda e: [str(part) for part in e.absolute_path])
    if errors:
        raise InputError("invalid synthetic recipe: " + "; ".join(_describe(e) for e in errors),
                         path=source)
    params = SyntheticParams(**{name: _convert(name, value) for name, value in resolved.items()})
    problems = _cross_checks(params)
    if problems:
        raise InputError("invalid synthetic recipe: " + "; ".join(problems), path=source)
    return params


def load_params(path: str | Path) -> SyntheticParams:
    """Read a YAML recipe (an empty file means all defaults)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("synthetic recipe not found", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {err}", path=path) from err
    return params_from_mapping({} if data is None else data, source=path)
