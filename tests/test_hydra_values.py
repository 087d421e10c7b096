"""Hydra reads every parameter value exactly as the space holds it.

The property tests run each rendered override through Hydra's own override parser and then
OmegaConf (as an ``@hydra.main`` application sees it); the end-to-end test runs a real
``@hydra.main`` app as a sweep's command on the local source.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.core.spec.job import JobTemplate
from hsm_notebook.core.spec.overrides import hydra_value

PARSER = OverridesParser.create()

#: Every Unicode scalar an argv can carry: all but NUL and lone surrogates (the space refuses those).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), TEXT)
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_ .:=,()\[\]{}\\/$-]{0,10}", fullmatch=True)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=12)

#: The values an earlier version passed as bare text and Hydra read as something else (or refused).
HOSTILE = [
    "true", "False", "123", "-7", "null", "None", "1e-3", "inf", "nan", "[1,2]", "{a:1}", " spaces around ", "",
    "${oc.env:HOME}", "${x}", "\\${x}", "a,b", "it's", 'say "hi"', "both ' and \"", "~/data", "#tag", "a=b",
    "line1\nline2", "tab\there", "héllo wörld ✓", "日本語", "back\\slash", "trailing\\", "q\\'", "$(id)", "`uname`",
    "*", "-x", "--flag", "+x", "@at", "%d", "a:b", "(x)", "f(1)", "[", "}", "adam", "resnet-50", "data/train.csv",
    True, None, 3, -2.5, 1e-05, [1, "two", None, [3.0]], {"lr": 0.1, "opt": {"name": "adam", "betas": [0.9, 0.999]}},
    {"a b": "c,d", "x:y": "${z}"},
]


def parsed(value):
    """What an ``@hydra.main`` application reads for ``v=<rendered value>``."""
    override = PARSER.parse_override("v=" + hydra_value(value))
    return OmegaConf.to_container(OmegaConf.create({"v": override.value()}), resolve=True)["v"]


def exact(value):
    """The value with every type spelled out, so True != 1 and 1 != 1.0."""
    if isinstance(value, list):
        return ["list", [exact(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", [[exact(k), exact(v)] for k, v in value.items()]]
    return [type(value).__name__, value]


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_every_value_reaches_hydra_unchanged(value):
    try:
        rendered = hydra_value(value)
    except ConfigError as err:  # only dict keys Hydra reads as numbers/bools/null may be refused
        assert "dict key" in str(err) and "would be read by Hydra" in str(err), err
        return
    assert exact(parsed(value)) == exact(value), rendered


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_every_string_reaches_hydra_unchanged(text):
    assert exact(parsed(text)) == exact(text)


@settings(max_examples=500, deadline=None)
@given(st.text("ab_-/.+%*@?|:$e0123456789EinfINFtrueTRUEnull{} ", max_size=8))
def test_bare_looking_text_reaches_hydra_unchanged(text):
    """Text near the line between what Hydra reads bare as a string and what it types."""
    assert exact(parsed(text)) == exact(text), hydra_value(text)


@pytest.mark.parametrize("key, why", [("1", "number"), ("true", "boolean"), ("Null", "null"), ("1e5", "number"),
                                      ("it's", "cannot hold"), ("é", "cannot hold"), ("", "empty")])
def test_dict_keys_hydra_cannot_spell_are_refused_before_launch(workdir, key, why):
    with pytest.raises(ConfigError) as err:
        Sweep(ParameterSpace(grid={"opt": [{key: 1}]}), ["python", "job.py"], workdir=workdir)
    assert err.value.field == "opt" and repr(key) in str(err.value) and why in str(err.value)
    assert "arg_style='argparse'" in str(err.value)
    Sweep(ParameterSpace(grid={"opt": [{key: 1}]}), ["python", "job.py"], workdir=workdir, arg_style="argparse")


def test_readable_values_stay_bare():
    template = JobTemplate(("train.py",))
    params = {"lr": 0.001, "model.name": "resnet-50", "data": "/data/train.csv", "flag": True, "n": None,
              "ls": [1, 2], "v": "v1.2.0"}
    assert template.args(params) == ["lr=0.001", "model.name=resnet-50", "data=/data/train.csv", "flag=true",
                                     "n=null", "ls=[1,2]", "v=v1.2.0"]
    assert template.args({"s": "true", "t": "a b", "n": "1.5", "u": "1_000"}) == ["s='true'", "t='a b'", "n='1.5'",
                                                                                   "u='1_000'"]


def test_argparse_style_stays_literal():
    template = JobTemplate(("train.py",), "argparse")
    assert template.args({"s": "it's ${x}", "d": {"a": 1}}) == ["--s=it's ${x}", '--d={"a":1}']


APP = textwrap.dedent('''
    import json, os
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def main(cfg):
        with open(os.path.join(os.environ["HSM_TASK_DIR"], "seen.json"), "w") as f:
            json.dump(OmegaConf.to_container(cfg, resolve=True), f)

    main()
''')


def test_a_real_hydra_app_receives_every_hostile_value_exactly(workdir):
    names = [f"v{i}" for i in range(len(HOSTILE))]
    (workdir / "app.py").write_text(APP)
    (workdir / "conf").mkdir()
    config = {name: None for name in names}
    config["x"] = "interpolated"
    config["hydra"] = {"run": {"dir": "${oc.env:HSM_TASK_DIR}/hydra"}, "output_subdir": None}
    (workdir / "conf" / "config.yaml").write_text(json.dumps(config))
    space = ParameterSpace(grid={name: [value] for name, value in zip(names, HOSTILE, strict=True)})
    sweep = Sweep(space, [sys.executable, "app.py"], [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir,
                  poll_interval=0.2).start()
    sweep.wait(timeout=120)
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all(), status[["state", "error"]].to_string()
    seen = json.loads((sweep.store.directory / "tasks" / status["job_name"].iloc[0] / "seen.json").read_text())
    wrong = {repr(v): seen[n] for n, v in zip(names, HOSTILE, strict=True) if exact(seen[n]) != exact(v)}
    assert not wrong, f"{len(wrong)} of {len(HOSTILE)} values changed on the way: {wrong}"
