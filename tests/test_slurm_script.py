"""Slurm batch scripts: the text we render (golden file, accepted and refused values) and what a
real Slurm reads from it (the single-node cluster of tests/servers/slurm.py).

The module is imported whole (``ss.sbatch_options``) so that a missing function fails its own
tests rather than the collection of the file.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, ResourceSpec, SlurmComputeSource
from hsm_notebook.sources import slurm_script as ss
from tests.helpers import until

DATA = Path(__file__).parent / "data"


def slurm_reads(line: str) -> list[str]:
    """The arguments Slurm's ``#SBATCH`` parser takes from ``line`` (sbatch/opt.c ``_get_argument``,
    as measured on 22.05): ``'`` or ``"`` group, a backslash takes the next character as it is,
    an unquoted ``#`` ends the line, a backslash before a space does NOT keep the space."""
    assert line.startswith("#SBATCH ")
    rest, i, args = line[len("#SBATCH"):], 0, []
    while True:
        while i < len(rest) and rest[i].isspace():
            i += 1
        arg, quote, escaped = "", None, False
        while i < len(rest) and (quote or not rest[i].isspace()):
            c, i = rest[i], i + 1
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
                continue
            elif quote:
                if c == quote:
                    quote = None
                    continue
            elif c in "'\"":
                quote = c
                continue
            elif c == "#":
                i = len(rest)
                break
            arg += c
        assert quote is None, f"Slurm stops with 'Unmatched {quote}' on {line!r}"
        if not arg:
            return args
        args.append(arg)


# -- rendering ----------------------------------------------------------------------------

GOLDEN = ResourceSpec(walltime="02:00:00", cpus=4, mem="16G", gpus=1, gpu_type="a100", partition="gpu",
                      account="lab", qos="normal", constraint="a100|h100",
                      extra={"exclusive": "", "mail-type": "END", "comment": "lr sweep", "signal": "USR1@150"},
                      modules=("cuda/12.1",), pre_script="source ~/venv/bin/activate")


#: A stand-in for core/job.py's WRAPPER (quotes and $ in it): the recorded text is about rendering,
#: and changes of the real wrapper's contract are tested with the wrapper.
WRAPPER = 'd=$1; shift; "$@" > "$d/stdout.log"; echo $? > "$d/exit_code"'


def test_generated_scripts_match_the_recorded_text():
    text = ss.array_script(GOLDEN, "hsm-demo", "/scratch/sweep/slurm/chunk-1.jobs", "/scratch/sweep/tasks",
                           "/scratch/sweep/slurm")
    text += "---\n" + ss.run_script("/home/me/project", {"HSM_TASK_DIR": "/scratch/sweep/tasks/abc-1", "LR": "0.1"},
                                    ["python", "train.py", "lr=0.1", "name=a b; $(x)"], "/scratch/sweep/tasks/abc-1",
                                    WRAPPER)
    assert text == (DATA / "sbatch_array.txt").read_text()
    assert "'name=a b; $(x)'" in text  # a hostile value stays one quoted word


def test_the_array_script_keeps_slurm_messages_in_an_appended_file_linked_into_the_task():
    text = ss.array_script(ResourceSpec(), "hsm-x", "/s/slurm/c.jobs", "/s/tasks", "/s/slurm")
    lines = text.splitlines()
    assert "#SBATCH --output=/s/slurm/%A_%a.out" in lines and "#SBATCH --open-mode=append" in lines
    assert "--error" not in text and "/dev/null\n" not in text.replace("2>/dev/null", "")
    job = next(i for i, line in enumerate(lines) if line.startswith("job="))
    assert lines[job + 1] == ('ln -f /s/slurm/"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}".out '
                              '/s/tasks/"$job"/slurm.out 2>/dev/null || true')
    assert lines[-1].startswith("exec /bin/sh /s/tasks/") and "slurm_id" in lines[-2]
    assert ss.SLURM_OUT == "slurm.out"


def test_a_slurm_dir_with_a_space_and_a_percent_is_quoted_for_each_reader():
    text = ss.array_script(ResourceSpec(), "hsm-x", "/s/c.jobs", "/s/my tasks", "/s/run 100%/slurm")
    assert '#SBATCH --output="/s/run 100%%/slurm/%A_%a.out"' in text  # %% is Slurm's literal %
    assert "ln -f '/s/run 100%/slurm'/\"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\".out " \
           "'/s/my tasks'/\"$job\"/slurm.out" in text
    with pytest.raises(ConfigError) as err:  # Slurm expands no pattern in a path holding a backslash
        ss.array_script(ResourceSpec(), "hsm-x", "/s/c.jobs", "/s/tasks", "/s/back\\slash")
    assert err.value.field == "slurm_dir"


@pytest.mark.parametrize("extra", [{"output": "logs/%x-%A_%a.out"}, {"error": "logs/%A_%a.err"}])
def test_the_users_own_output_or_error_replaces_ours_and_the_link(extra):
    text = ss.array_script(ResourceSpec(extra=extra), "hsm-x", "/s/c.jobs", "/s/tasks", "/s/slurm")
    assert "/s/slurm/%A_%a.out" not in text and "--open-mode" not in text and "ln -f" not in text
    (key, value), = extra.items()
    assert f"#SBATCH --{key}={value}" in text.splitlines()


# accepted: (ResourceSpec keywords, what sbatch gets on its command line, the #SBATCH line); keywords,
# not specs, so that a field the spec lacks fails its own test only
ACCEPTED = [
    (dict(constraint="a100|h100"), "--constraint=a100|h100", "--constraint=a100|h100"),
    (dict(constraint="intel&ib"), "--constraint=intel&ib", "--constraint=intel&ib"),
    (dict(constraint="[rack1|rack2]*2"), "--constraint=[rack1|rack2]*2", "--constraint=[rack1|rack2]*2"),
    (dict(extra={"nodelist": "node[01-04]"}), "--nodelist=node[01-04]", "--nodelist=node[01-04]"),
    (dict(extra={"output": "logs/%x-%A_%a.out"}), "--output=logs/%x-%A_%a.out", "--output=logs/%x-%A_%a.out"),
    (dict(extra={"comment": "lr sweep"}), "--comment=lr sweep", '--comment="lr sweep"'),
    (dict(extra={"mail-user": "me@x.org"}), "--mail-user=me@x.org", "--mail-user=me@x.org"),
    (dict(extra={"comment": "run #3"}), "--comment=run #3", '--comment="run #3"'),
    (dict(extra={"comment": "a $HOME it's \\ \"q\""}), "--comment=a $HOME it's \\ \"q\"",
     '--comment="a $HOME it\'s \\\\ \\"q\\""'),
    (dict(extra={"comment": "café 日本"}), "--comment=café 日本", '--comment="café 日本"'),
    (dict(extra={"ntasks": 4}), "--ntasks=4", "--ntasks=4"),
    (dict(extra={"exclusive": ""}), "--exclusive", "--exclusive"),
    (dict(partition="gpu,cpu"), "--partition=gpu,cpu", "--partition=gpu,cpu"),
    *((dict(mem=m), f"--mem={m}", f"--mem={m}") for m in ("4GB", "4G", "500M", "500mb", "1T", "4096", "0")),
    *((dict(walltime=t), f"--time={t}", f"--time={t}")
      for t in ("1-00:00", "5:00", "5", "1-0", "1-00:00:00", "02:00:00", "100:00:00", "UNLIMITED", "infinite")),
    # the batch shell (our wrapper) gets the signal and forwards it; without B: only job steps would
    (dict(extra={"signal": "USR1@150"}), "--signal=B:USR1@150", "--signal=B:USR1@150"),
    (dict(extra={"signal": "10@30"}), "--signal=B:10@30", "--signal=B:10@30"),
    (dict(extra={"signal": "R:USR2"}), "--signal=RB:USR2", "--signal=RB:USR2"),
    (dict(extra={"signal": "B:TERM@60"}), "--signal=B:TERM@60", "--signal=B:TERM@60"),
    (dict(extra={"signal": "sigusr1"}), "--signal=B:sigusr1", "--signal=B:sigusr1"),
    # with srun the program is a job step: Slurm's default already reaches it
    (dict(srun=True, extra={"signal": "USR1@150"}), "--signal=USR1@150", "--signal=USR1@150"),
    (dict(srun=True, extra={"signal": "R:USR2"}), "--signal=R:USR2", "--signal=R:USR2"),
]


@pytest.mark.parametrize("kw, option, line", ACCEPTED)
def test_valid_slurm_values_are_rendered_as_slurm_reads_them(kw, option, line):
    spec = ResourceSpec(**kw)
    assert option in ss.sbatch_options(spec)
    assert f"#SBATCH {line}" in ss.sbatch_lines(spec)
    SlurmComputeSource("s", 10, resources=spec)  # the source accepts it at construction too


@pytest.mark.parametrize("kw", [kw for kw, _, _ in ACCEPTED] + [vars(GOLDEN)])
def test_each_sbatch_line_gives_slurm_exactly_the_command_line_option(kw):
    spec = ResourceSpec(**kw)
    assert [arg for line in ss.sbatch_lines(spec) for arg in slurm_reads(line)] == ss.sbatch_options(spec)


def test_srun_adds_nothing_to_the_batch_script():
    assert ss.sbatch_options(ResourceSpec(srun=True)) == []  # one task, Slurm's default
    assert ss.sbatch_options(ResourceSpec(srun=True, extra={"ntasks": "4"})) == ["--ntasks=4"]


@pytest.mark.parametrize("kw, field", [
    (dict(walltime="2 hours"), "walltime"), (dict(mem="lots"), "mem"), (dict(cpus=0), "cpus"),
    (dict(gpu_type="a100"), "gpu_type"), (dict(partition="gpu; rm -rf /"), "partition"),
    (dict(extra={"Bad Option": "1"}), "extra"), (dict(gpus=-1), "gpus"),
    (dict(walltime="1:2:3:4"), "walltime"), (dict(walltime="1.5"), "walltime"),
    (dict(walltime=""), "walltime"), (dict(walltime="1-"), "walltime"),
    (dict(mem="4.5G"), "mem"), (dict(mem="4GiB"), "mem"), (dict(mem="4 G"), "mem"),
    (dict(mem="10P"), "mem"), (dict(partition=""), "partition"), (dict(account="a b"), "account"),
    (dict(constraint="a100\n#SBATCH --uid=0"), "constraint"), (dict(qos="normal\r"), "qos"),
    (dict(extra={"comment": "a\nb"}), "extra.comment"), (dict(extra={"comment": "a\x00b"}), "extra.comment"),
    (dict(extra={"comment": "tab\there"}), "extra.comment"),
    (dict(extra={"comment": ""}), "extra.comment"),  # sbatch would take the next argument as the comment
    (dict(extra={"mail-user": None}), "extra.mail-user"), (dict(extra={"--comment": "x"}), "extra"),
    (dict(extra={"mail_user": "me@x.org"}), "extra"), (dict(extra={"comment": ["x"]}), "extra.comment"),
    *((dict(extra={"signal": s}), "extra.signal")
      for s in ("FOO", "0", "B:", "USR1@x", "@30", "X:USR1", "RR:USR1", "USR1@65536", "65536", "B:USR1 @5",
                "PIPE", "USR1@-1", "")),
    (dict(srun="yes"), "srun"),
])
def test_bad_resources_are_rejected_before_submission_naming_the_field(kw, field):
    spec = ResourceSpec(**kw)
    for render in (ss.sbatch_lines, ss.sbatch_options):
        with pytest.raises(ConfigError) as err:
            render(spec)
        assert err.value.field == field
    with pytest.raises(ConfigError):
        SlurmComputeSource("s", 10, resources=spec)


def test_refusals_say_what_to_write_instead():
    with pytest.raises(ConfigError, match=r"walltime: '2 hours' is not a Slurm time: use .*D-HH:MM:SS"):
        ss.sbatch_options(ResourceSpec(walltime="2 hours"))
    with pytest.raises(ConfigError, match=r"extra.signal: .*\[R\|B:\]SIGNAL\[@SECONDS\].*B:USR1@120"):
        ss.sbatch_options(ResourceSpec(extra={"signal": "FOO"}))
    with pytest.raises(ConfigError, match=r"extra.comment: .*control character.*line break"):
        ss.sbatch_options(ResourceSpec(extra={"comment": "a\nb"}))
    with pytest.raises(ConfigError, match=r"extra.comment: needs a value"):
        ss.sbatch_options(ResourceSpec(extra={"comment": ""}))


# -- against the real Slurm -----------------------------------------------------------------

def _test_only(cluster, spec: ResourceSpec):
    return cluster.run("sbatch", "--test-only", f"--partition={cluster.partition}", *ss.sbatch_options(spec),
                       "--wrap", "true")


@pytest.mark.parametrize("kw", [
    dict(extra={"comment": "lr sweep $HOME it's \\ \"q\" #3"}),
    dict(extra={"mail-user": "me@x.org", "mail-type": "END"}),
    dict(extra={"signal": "USR1@150"}), dict(extra={"signal": "R:USR2"}),
    dict(srun=True, extra={"signal": "USR1@150"}), dict(extra={"signal": "10@30"}),
    dict(extra={"output": "logs/%x-%A_%a.out"}),
    *(dict(walltime=t) for t in ("1-00:00", "5:00", "5", "1-0", "02:00:00", "UNLIMITED")),
    *(dict(mem=m) for m in ("10MB", "10mb", "10M", "1G", "0")),
    dict(extra={"exclusive": "", "ntasks": 2}),
], ids=repr)
def test_slurm_accepts_the_values_the_node_allows(slurm_cluster, kw):
    result = _test_only(slurm_cluster, ResourceSpec(**kw))
    assert result.returncode == 0, result.stderr


def test_slurm_accepts_the_node_named_in_a_nodelist(slurm_cluster):
    result = _test_only(slurm_cluster, ResourceSpec(extra={"nodelist": slurm_cluster.node}))
    assert result.returncode == 0, result.stderr


def test_slurm_reads_a_hostile_comment_from_the_script_as_given(slurm_cluster, tmp_path):
    comment = "lr sweep $HOME it's \\ \"q\" #3"
    script = tmp_path / "held.sh"
    script.write_text("\n".join(["#!/bin/bash", "#SBATCH --hold",
                                 *ss.sbatch_lines(ResourceSpec(extra={"comment": comment, "signal": "USR1@150"})),
                                 "true", ""]))
    job = slurm_cluster.sbatch("-o", "/dev/null", str(script))
    try:
        # scontrol prints two spaces after the comment, and the parser keeps one
        assert slurm_cluster.show_job(job)["Comment"].removesuffix(" ") == comment
    finally:
        slurm_cluster.run("scancel", job)


def test_an_array_task_keeps_slurms_messages_hard_linked_in_its_folder(slurm_cluster, tmp_path):
    slurm_dir, tasks = tmp_path / "run 100%" / "slurm", tmp_path / "my tasks"
    slurm_dir.mkdir(parents=True)
    (tasks / "job-a").mkdir(parents=True)
    (tasks / "job-a" / "run.sh").write_text("echo hello from run.sh\nexec sleep 60\n")
    (slurm_dir / "c.jobs").write_text("job-a\n")
    script = slurm_dir / "c.sh"
    script.write_text(ss.array_script(ResourceSpec(extra={"comment": "lr sweep"}), "hsmt-link",
                                      str(slurm_dir / "c.jobs"), str(tasks), str(slurm_dir)))
    job = slurm_cluster.sbatch("--array=0", str(script))
    linked = tasks / "job-a" / ss.SLURM_OUT
    try:
        until(lambda: linked.exists() and "hello from run.sh" in linked.read_text(), timeout=30,
              what="the task's slurm.out with run.sh's output")
        assert (tasks / "job-a" / "slurm_id").read_text().strip() == f"{job}_0"
        slurm_cluster.run("scancel", job, check=True)
        slurm_cluster.wait_job(job)
        until(lambda: "CANCELLED AT" in linked.read_text(), timeout=10, what="Slurm's own cancel message")
    finally:
        slurm_cluster.run("scancel", job)
    original = slurm_dir / f"{job}_0.out"
    assert os.path.samefile(original, linked) and original.stat().st_nlink == 2  # a hard link: tar copies it
    assert shlex.quote(str(slurm_dir)) in script.read_text()
