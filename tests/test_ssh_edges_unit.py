"""Issue 19, items 8, 9 and 11 without a server: the ``collect=`` grammar as a table, the product's
own files, and a source that stays unreachable (a fake, named so: a host that never answers again
cannot be had for the whole stall timeout more cheaply than this)."""

from __future__ import annotations

import pytest

from hsm_notebook import (
    ConnectError,
    HsmError,
    ParameterSpace,
    RetryPolicy,
    Sweep,
)
from hsm_notebook.core.engine.gate import Gate
from hsm_notebook.core.engine.retry import unreachable
from hsm_notebook.core.model.errors import CommandTimeout, NotConnected, SubmitError
from hsm_notebook.core.spec.jobpaths import NAMES
from hsm_notebook.sources.collect import check_patterns, product_file, wanted
from tests.sources import FakeLyingHealthSource, FakeUnreachableSource

# (pattern, path in the job's folder, fetched?)
TABLE = [
    ("eval/*.json", "eval/a.json", True),
    ("eval/*.json", "eval/deep/x.json", False),  # `*` stays inside one name
    ("eval/*.json", "other/eval/c.json", False),  # anchored at the job's folder
    ("eval/*.json", "eval/new\nline.json", True),  # any character of a name, a newline too
    ("*.log", "train.log", True),
    ("*.log", "sub/train.log", False),
    ("**/*.log", "train.log", True),  # `**` is any number of folders, none included
    ("**/*.log", "a/b/train.log", True),
    ("eval/**/*.json", "eval/x.json", True),
    ("eval/**/*.json", "eval/a/b/x.json", True),
    ("eval/**/*.json", "other/eval/x.json", False),
    ("eval/**", "eval/a/b/c.bin", True),
    ("eval/", "eval/a/b/c.bin", True),  # a trailing `/`: everything under the folder
    ("eval/", "evaluation/a", False),
    ("ckpt_?.pt", "ckpt_1.pt", True),
    ("ckpt_?.pt", "ckpt_10.pt", False),
    ("ckpt_[0-4].pt", "ckpt_3.pt", True),
    ("ckpt_[!0-4].pt", "ckpt_7.pt", True),
    ("ckpt_[!0-4].pt", "ckpt_3.pt", False),
    ("a**b", "a/x/b", False),  # `**` inside a name is `*`
    ("a**b", "axxb", True),
    ("d\\*x", "d*x", True),
    ("d\\*x", "dyx", False),
]


@pytest.mark.parametrize("pattern, path, fetched", TABLE)
def test_collect_grammar(pattern, path, fetched):
    assert wanted("job", path, check_patterns([pattern])) is fetched


@pytest.mark.parametrize("path", [*NAMES.product, "run1/stdout.log", "run12/metrics.jsonl"])
def test_the_products_own_files_always_come_back(path):
    assert product_file(path) and wanted("job", path, [])
    assert not product_file("runx/stdout.log") and not product_file("sub/metrics.jsonl")
    assert {"metrics.jsonl", "result.pkl", "slurm.out", "exit_code", "stdout.log"} <= set(NAMES.product)


def test_what_cannot_be_contacted_spends_no_attempt():
    assert unreachable(ConnectError("connection refused by h", "s")) and unreachable(NotConnected("down", "s"))
    assert unreachable(ConnectionRefusedError())
    assert not unreachable(CommandTimeout(["x"], 1, "h", "s")) and not unreachable(SubmitError("sbatch: no", "s"))
    gate = Gate()
    gate.unreachable = "connection refused"
    assert not gate.takes_work and gate.reachable and gate.may_open and "reachable again" in gate.describe()


def test_a_host_that_stays_away_stops_the_sweep_in_words_with_no_attempt_spent(tmp_path):
    source = FakeUnreachableSource()
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["true"], [source], workdir=tmp_path, poll_interval=0.05,
                  retry=RetryPolicy(max_attempts=2, backoff=0), stall_timeout=1.5, health_interval=60)
    with pytest.raises(HsmError) as info:
        sweep.run()
    message = str(info.value)
    assert "away could not be reached for 2 s" in message and "spent no attempt" in message, message
    assert "connection refused" in message and "Sweep.attach(dir)" in message, message
    assert source.tries == 2  # one refill of each slot, then the source waits: no task hammers it
    status = sweep.status()
    assert (status["state"] == "PENDING").all() and (status["attempt"] == 0).all(), status[["state", "attempt"]]
    waiting = status["detail"].fillna("").str.contains("waiting for away to be reachable again: .*refused")
    assert waiting.sum() == 2, status["detail"].tolist()


def test_a_health_check_that_says_healthy_while_nothing_gets_through_ends_in_words(tmp_path):
    source = FakeLyingHealthSource("liar")
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["true"], [source], workdir=tmp_path, poll_interval=0.05,
                  retry=RetryPolicy(max_attempts=3, backoff=0), stall_timeout=1.5, health_interval=60)
    with pytest.raises(HsmError, match=r"liar could not be reached for 2 s \(liar: .*refused.*\); 2 task\(s\) wait"):
        sweep.run()
    status = sweep.status()
    assert (status["state"] == "PENDING").all() and (status["attempt"] == 0).all(), status[["state", "attempt"]]
    assert source.tries >= 2  # each "healthy" reopened it for another try; none spent an attempt
