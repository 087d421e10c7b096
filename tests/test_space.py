"""The parameter space: products, pairing, filters, sampling, ids, YAML, bad input."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import pytest

from hsm_notebook import ConfigError, ParameterSpace, SweepFile, task_id


def test_grid_is_a_cartesian_product_with_last_key_fastest():
    space = ParameterSpace(grid={"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(space) == 6
    assert list(space)[:4] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}, {"a": 2, "b": "x"}]
    assert space[5] == {"a": 2, "b": "z"} and space[-1] == space[5]


def test_paired_groups_zip_within_and_cross_with_the_grid():
    space = ParameterSpace(grid={"lr": [0.1, 0.2]}, paired=[{"seed": [1, 2, 3], "split": ["a", "b", "c"]}],
                           fixed={"epochs": 5})
    combos = list(space)
    assert len(combos) == len(space) == 6
    assert {(c["seed"], c["split"]) for c in combos} == {(1, "a"), (2, "b"), (3, "c")}
    assert all(c["epochs"] == 5 for c in combos)
    assert combos[0] == {"lr": 0.1, "seed": 1, "split": "a", "epochs": 5}


def test_two_paired_groups_are_crossed():
    space = ParameterSpace(paired=[{"a": [1, 2], "b": [3, 4]}, {"c": [5, 6, 7], "d": [8, 9, 10]}])
    assert len(space) == 6
    assert {(c["a"], c["c"]) for c in space} == {(1, 5), (1, 6), (1, 7), (2, 5), (2, 6), (2, 7)}


def test_nested_dicts_flatten_to_dotted_keys():
    space = ParameterSpace(grid={"model": {"hidden_size": [64, 128], "act": ["relu"]}}, fixed={"opt": {"name": "adam"}})
    assert space[0] == {"model.hidden_size": 64, "model.act": "relu", "opt.name": "adam"}


def test_exclude_and_filter():
    space = ParameterSpace(grid={"a": [1, 2, 3], "b": [1, 2]}, exclude=[{"a": 2, "b": 1}], filter=lambda p: p["a"] != 3)
    assert list(space) == [{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 2}]
    assert len(space) == 3 and space[2] == {"a": 2, "b": 2}


def test_sampling_is_seeded_distinct_and_respects_filters():
    big = {"a": list(range(100)), "b": list(range(100))}
    s1 = ParameterSpace(grid=big, sample=10, seed=7)
    s2 = ParameterSpace(grid=big, sample=10, seed=7)
    s3 = ParameterSpace(grid=big, sample=10, seed=8)
    assert list(s1) == list(s2) and list(s1) != list(s3)
    assert len(s1) == 10 and len({task_id(p) for p in s1}) == 10
    odd = ParameterSpace(grid=big, sample=5, seed=1, filter=lambda p: p["a"] % 2 == 1)
    assert len(odd) == 5 and all(p["a"] % 2 == 1 for p in odd)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"grid": {"a": [1, 2], "b": [1, 2]}, "sample": 100}, "sample=100 but the space has only 4 combinations"),
        ({"combinations": [{"a": 1}, {"a": 2}], "fixed": {"c": 0}, "sample": 3}, "only 2 combinations"),
    ],
)
def test_sample_larger_than_the_space_is_a_config_error(kwargs, words):
    with pytest.raises(ConfigError) as err:
        ParameterSpace(**kwargs)
    assert err.value.field == "sample" and words in str(err.value) and "lower sample or drop it" in str(err.value)
    assert len(ParameterSpace(grid={"a": [1, 2], "b": [1, 2]}, sample=4)) == 4  # the whole space is fine


def test_sample_larger_than_what_exclude_and_filter_keep_is_a_config_error():
    space = ParameterSpace(grid={"a": list(range(10))}, exclude=[{"a": 0}], filter=lambda p: p["a"] < 4, sample=5)
    with pytest.raises(ConfigError) as err:
        len(space)
    assert err.value.field == "sample" and "sample=5 but only 3 of the 10" in str(err.value)
    assert "loosen exclude/filter" in str(err.value)


def test_explicit_list_of_dicts():
    space = ParameterSpace(combinations=[{"a": 1, "b": 2}, {"a": 3, "b": {"c": 4}}])
    assert list(space) == [{"a": 1, "b": 2}, {"a": 3, "b.c": 4}]
    assert len(space) == 2


def test_explicit_combinations_keep_exactly_their_own_keys(tmp_path):
    combos = [{"lr": 0.1, "bs": 32}, {"lr": 0.2}, {"opt": "sgd", "lr": 0.3, "bs": None}]
    space = ParameterSpace(combinations=combos, fixed={"epochs": 3})
    expected = [{"lr": 0.1, "bs": 32, "epochs": 3}, {"lr": 0.2, "epochs": 3},
                {"lr": 0.3, "bs": None, "opt": "sgd", "epochs": 3}]
    assert list(space) == expected and len(space) == 3
    assert [space[i] for i in range(3)] == expected and space[-2] == expected[1]
    assert [tid for tid, _ in space.with_ids()] == [task_id(p) for p in expected]
    assert task_id(space[1]) == task_id({"epochs": 3, "lr": 0.2})  # no bs: None in the id either
    again = ParameterSpace.from_dict(space.to_dict())
    assert list(again) == expected
    space.to_yaml(tmp_path / "s.yaml")
    assert list(ParameterSpace.from_yaml(tmp_path / "s.yaml")) == expected
    df = space.preview()
    assert list(df.columns) == ["lr", "bs", "opt", "epochs"] and list(df.index) == [task_id(p) for p in expected]
    assert df.loc[task_id(expected[0]), "bs"] == 32 and type(df.loc[task_id(expected[0]), "bs"]) is int
    assert df.isna().loc[task_id(expected[1]), "bs"] and df.loc[task_id(expected[2]), "bs"] is None


def test_explicit_combinations_cross_with_a_grid_and_exclude_needs_the_key_to_be_set():
    space = ParameterSpace(grid={"seed": [1, 2]}, combinations=[{"lr": 0.1, "bs": 32}, {"lr": 0.2}],
                           exclude=[{"bs": None}, {"seed": 2, "bs": 32}])
    assert list(space) == [{"seed": 1, "lr": 0.1, "bs": 32}, {"seed": 1, "lr": 0.2}, {"seed": 2, "lr": 0.2}]


def test_exclude_compares_values_with_their_types():
    space = ParameterSpace(grid={"x": [1, True, 1.0, "1", 0, False, None]}, exclude=[{"x": 1}])
    assert [p["x"] for p in space] == [True, "1", 0, False, None]  # 1 and 1.0 go; True stays
    kept = [p["x"] for p in ParameterSpace(grid={"x": [1, True, 0, False]}, exclude=[{"x": True}, {"x": 0}])]
    assert kept == [1, False] and type(kept[0]) is int
    lists = ParameterSpace(grid={"x": [[1, 0], [True, False], [1.0, 0.0]]}, exclude=[{"x": [True, False]}])
    assert [p["x"] for p in lists] == [[1, 0], [1.0, 0.0]]
    assert [p["x"] for p in ParameterSpace(grid={"x": [[1, 0], [2]]}, exclude=[{"x": (1, 0)}])] == [[2]]


def test_task_ids_are_stable_across_processes():
    params = {"lr": 0.001, "model.width": 128, "name": "x y", "flag": True}
    here = task_id(params)
    reordered = {k: params[k] for k in reversed(list(params))}
    code = f"from hsm_notebook import task_id; print(task_id({reordered!r}))"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there and len(here) == 12
    assert task_id({"a": 1}) != task_id({"a": 1.0}) != task_id({"a": "1"})


def test_a_million_combinations_are_counted_and_sliced_lazily():
    grid = {f"p{i}": list(range(10)) for i in range(6)}  # 10**6
    tracemalloc.start()
    space = ParameterSpace(grid=grid)
    n = len(space)
    first = space.take(10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 10**6 and first[9] == {"p0": 0, "p1": 0, "p2": 0, "p3": 0, "p4": 0, "p5": 9}
    assert space[999_999] == {f"p{i}": 9 for i in range(6)}
    assert peak < 5_000_000, f"peak {peak} bytes: the space was materialised"  # speed: bench/local_dispatch.py


def test_reference_sweep_yaml_reads_unchanged(tmp_path):
    (tmp_path / "sweep.yaml").write_text(
        "sweep:\n"
        "  grid:\n"
        "    learning_rate: [0.001, 0.01]\n"
        "    model:\n      hidden_size: [64, 128]\n"
        "  paired:\n"
        "    - seeds:\n        seed: [1, 2, 3]\n        data.split: [a, b, c]\n"
        "metadata:\n  description: reference format\n"
    )
    spec = SweepFile.load(tmp_path / "sweep.yaml")
    assert len(spec.space) == 12 and spec.command is None
    assert spec.space[0] == {"learning_rate": 0.001, "model.hidden_size": 64, "seed": 1, "data.split": "a"}
    assert spec.metadata == {"description": "reference format"}
    assert len(ParameterSpace.from_yaml(tmp_path / "sweep.yaml")) == 12


def test_yaml_round_trip(tmp_path):
    space = ParameterSpace(grid={"a": [1, 2]}, paired=[{"b": [1, 2], "c": ["x", "y"]}], fixed={"d": None},
                           exclude=[{"a": 1, "b": 2}], sample=3, seed=4)
    space.to_yaml(tmp_path / "s.yaml")
    again = ParameterSpace.from_yaml(tmp_path / "s.yaml")
    assert list(again) == list(space) and len(again) == 3


def test_preview_is_a_small_dataframe_indexed_by_task_id():
    df = ParameterSpace(grid={"a": list(range(1000))}).preview(3)
    assert list(df["a"]) == [0, 1, 2] and df.index.name == "task_id" and df.index[0] == task_id({"a": 0})


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        ({"grid": {"lr": 0.1}}, "grid.lr", "must be a list"),
        ({"grid": {"lr": []}}, "grid.lr", "empty list"),
        ({"paired": [{"a": [1, 2], "b": [1]}]}, "paired[0]", "same length"),
        ({"grid": {"a": [1]}, "fixed": {"a": 2}}, "a", "given twice"),
        ({"grid": {"a": [1], "model": {"w": [1]}}, "paired": [{"model.w": [2]}]}, "model.w", "given twice"),
        ({"grid": {"a": [object()]}}, "grid.a", "JSON"),
        ({"grid": {"a": [float("nan")]}}, "grid.a", "JSON"),
        ({"grid": {"a": [1]}, "sample": 0}, "sample", ">= 1"),
        ({"grid": {"a": [1]}, "exclude": [{"zz": 1}]}, "exclude", "unknown parameters"),
        ({"paired": [{}]}, "paired[0]", "empty group"),
        ({"grid": {"a=b": [1]}}, "grid", "'a=b' contains '='"),
        ({"grid": {"model": {"w=1": [1]}}}, "grid", "'model.w=1' contains '='"),
        ({"grid": {"learning rate": [1]}}, "grid", "'learning rate' contains whitespace"),
        ({"fixed": {"name\t": 1}}, "fixed", "contains whitespace"),
        ({"paired": [{"-lr": [1], "b": [2]}]}, "paired[0]", "'-lr' starts with '-'"),
        ({"combinations": [{"a": 1}, {"--b": 2}]}, "combinations", "'--b' starts with '-'"),
        ({"grid": {"": [1]}}, None, "non-empty"),
    ],
)
def test_bad_spaces_name_the_field_and_the_fix(kwargs, field, words):
    with pytest.raises(ConfigError) as err:
        ParameterSpace(**kwargs)
    assert err.value.field == field and words in str(err.value)


@pytest.mark.parametrize(
    "text, words",
    [
        ("sweep:\n  grid:\n    a: [1]\n  grids: {}\n", "unknown keys ['grids']"),
        ("sweep:\n  grid:\n    a: [1]\ncommand: [python, t.py]\nsources: []\n", "unknown keys ['sources']"),
        ("nothing: here\n", "no 'sweep:' section"),
        ("sweep: [1, 2]\n", "must be a mapping"),
        ("sweep:\n  grid:\n    a: 1\n", "must be a list"),
        ("sweep:\n  grid: {a: [1]\n", "not valid YAML"),
        ("sweep:\n  paired: {a: [1]}\n", "list of groups"),
    ],
)
def test_bad_yaml_is_a_config_error(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        SweepFile.load(path)
    assert words in str(err.value)


def test_bad_parameter_names_say_which_characters_are_allowed():
    with pytest.raises(ConfigError) as err:
        ParameterSpace(grid={"a b": [1]})
    assert "name=value" in str(err.value) and "other than '=' and whitespace, not starting with '-'" in str(err.value)


def test_usual_parameter_names_stay_valid():
    names = ["lr", "model.width", "data_split", "data.split", "x-y", "+trainer.devices", "++seed", "~callbacks",
             "model/encoder", "db@backup", "layers.0.size", "α"]
    space = ParameterSpace(grid={n: [1] for n in names}, fixed={"model": {"depth": 2}})
    assert list(space.names) == [*names, "model.depth"]


def test_yaml_reads_exponent_floats_as_numbers(tmp_path):
    (tmp_path / "s.yaml").write_text("sweep:\n  grid:\n    lr: [1e-3, 3e-4, 1.5E+2, .5, 10]\n")
    assert [p["lr"] for p in ParameterSpace.from_yaml(tmp_path / "s.yaml")] == [0.001, 0.0003, 150.0, 0.5, 10]
