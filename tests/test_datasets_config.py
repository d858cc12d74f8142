"""Dataset sheet and configuration validation: every mistake is named, with its row or key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from celltrails.datasets import load_datasets, parse_voxel_size
from celltrails.errors import InputError
from conftest import REPO
from snakemake.utils import validate

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
HEADER = "dataset\tpath\tlayout\tground_truth\tvoxel_size\ttime_interval\tchannels\tannotations\n"


def write_sheet(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    sheet = tmp_path / "datasets.tsv"
    sheet.write_text(header + "".join(r + "\n" for r in rows))
    return sheet


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    (tmp_path / "seq").mkdir()
    (tmp_path / "recipe.yaml").write_text("seed: 1\n")
    return tmp_path


def test_valid_sheet_resolves_paths_against_the_working_directory(sources):
    sheet = write_sheet(sources, "a\tseq\tctc\t\t2,0.5,0.5\t5\tnuclei,reporter\t",
                        "b\trecipe.yaml\tsynthetic\t\t\t\t\t")
    datasets = load_datasets("datasets.tsv", base=sources)
    assert list(datasets) == ["a", "b"]
    assert datasets["a"].path == sources / "seq"
    assert datasets["a"].voxel_size == (2.0, 0.5, 0.5)
    assert datasets["a"].time_interval == 5.0
    assert datasets["a"].channels == ("nuclei", "reporter")
    assert not datasets["a"].has_ground_truth and datasets["b"].has_ground_truth
    assert sheet.exists()


def test_every_problem_is_reported_with_its_row(sources):
    write_sheet(sources,
                "a\tseq\tctc\t\t\t\t\t",
                "a\tseq\tctc\t\t\t\t\t",               # duplicate name
                "b\tmissing_folder\tctc\t\t\t\t\t",      # missing path
                "c\tseq\tczi\t\t\t\t\t",                 # unknown layout
                "d e\tseq\tctc\t\t\t\t\t",               # bad name
                "f\tseq\tctc\t\t1,0,1\t\t\t",            # bad voxel size
                "g\tseq\tctc\tno_gt\t\t-3\t\t")          # missing GT, bad interval
    with pytest.raises(InputError) as info:
        load_datasets("datasets.tsv", base=sources)
    message = str(info.value)
    for expected in ["row 3 (dataset 'a'): duplicate dataset name, already on row 2",
                     "row 4 (dataset 'b'): source", "missing_folder' does not exist",
                     "row 5 (dataset 'c'): unknown layout 'czi'",
                     "row 6 (dataset 'd e'): dataset name",
                     "row 7 (dataset 'f'): voxel_size '1,0,1' must be three positive numbers",
                     "row 8 (dataset 'g'): ground_truth", "time_interval '-3'"]:
        assert expected in message, f"{expected!r} not in:\n{message}"


def test_unknown_and_missing_columns(sources):
    write_sheet(sources, "a\tseq\tctc\tx", header="dataset\tpath\tlayout\tvoxelsize\n")
    with pytest.raises(InputError, match=r"unknown column\(s\) \['voxelsize'\]"):
        load_datasets("datasets.tsv", base=sources)
    write_sheet(sources, "a,seq,ctc", header="dataset,path,layout\n")
    with pytest.raises(InputError, match="missing required column.*tab-separated"):
        load_datasets("datasets.tsv", base=sources)


def test_empty_sheet_and_missing_sheet(sources):
    write_sheet(sources)
    with pytest.raises(InputError, match="registers no dataset"):
        load_datasets("datasets.tsv", base=sources)
    with pytest.raises(InputError, match="dataset sheet not found"):
        load_datasets("other.tsv", base=sources)


def test_synthetic_recipe_must_be_a_file(sources):
    write_sheet(sources, "s\tseq\tsynthetic\t\t\t\t\t")
    with pytest.raises(InputError, match="the path is the generator recipe"):
        load_datasets("datasets.tsv", base=sources)


def test_nucleus_radius_is_optional_and_must_be_a_positive_number(sources):
    header = HEADER.rstrip("\n") + "\tnucleus_radius\n"
    write_sheet(sources, "a\tseq\tctc\t\t\t\t\t\t25", "b\tseq\tctc\t\t\t\t\t\t", header=header)
    datasets = load_datasets("datasets.tsv", base=sources)
    assert datasets["a"].nucleus_radius == 25.0 and datasets["b"].nucleus_radius is None
    write_sheet(sources, "a\tseq\tctc\t\t\t\t\t\t-2", "b\tseq\tctc\t\t\t\t\t\tbig", header=header)
    with pytest.raises(InputError) as info:
        load_datasets("datasets.tsv", base=sources)
    assert "row 2 (dataset 'a'): nucleus_radius '-2' must be a positive number" in str(info.value)
    assert "row 3 (dataset 'b'): nucleus_radius 'big'" in str(info.value)


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "1,2,3,4", "0,1,1", "nan,1,1", "-1,1,1"])
def test_voxel_size_must_be_three_positive_numbers(text):
    with pytest.raises(ValueError, match="voxel_size"):
        parse_voxel_size(text)


def test_config_schema_fills_defaults():
    config = {"datasets": "x.tsv"}
    validate(config, str(SCHEMA))
    assert config["convert"] == {"tile_yx": 256, "threads": 2}
    assert config["qc"]["montage_frames"] == 6


def test_shipped_config_is_valid():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    datasets = load_datasets(config["datasets"], base=REPO)
    assert datasets, "the embedded default registers at least one dataset"


@pytest.mark.parametrize("config, key", [
    ({"convert": {"tile_xy": 128}}, "tile_xy"),        # typo in a nested key
    ({"datasheet": "x.tsv"}, "datasheet"),              # typo at the top level
    ({"convert": {"tile_yx": "big"}}, "big"),           # wrong type
])
def test_unknown_key_or_wrong_type_is_an_error_naming_it(config, key):
    with pytest.raises(Exception, match=key):
        validate(config, str(SCHEMA))
