"""SGEComputeSource: Grid Engine's words read without a server (recorded ``qstat -xml`` / ``qacct``
output of Son of Grid Engine 8.1.9, rendered ``#$`` lines), then against the real single-node Grid
Engine the tests start (tests/servers/sge.py): arrays, pending reasons, cancels, resources, an SSH
login node, the panel."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from hsm_notebook import ConfigError, JobState, ParameterSpace, ResourceSpec, SGEComputeSource, SourceError, Sweep
from hsm_notebook.sources import sge as sge_module
from hsm_notebook.sources import sge_tasks
from tests.helpers import job_sweep, until

# Recorded on the test cluster (qstat -xml while an array of 5 ran 2 at a time, a held array and an
# array in error waited): running tasks one record each, pending ones one record per range.
QSTAT_XML = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>2</JB_job_number><JAT_prio>0.50000</JAT_prio><JB_name>arr</JB_name><JB_owner>root</JB_owner>
      <state>r</state><JAT_start_time>2026-12-07T23:38:35</JAT_start_time><queue_name>all.q@vm</queue_name>
      <slots>1</slots><tasks>1</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>2</JB_job_number><JAT_prio>0.50000</JAT_prio><JB_name>arr</JB_name><JB_owner>root</JB_owner>
      <state>t</state><JAT_start_time>2026-12-07T23:38:35</JAT_start_time><queue_name>all.q@vm</queue_name>
      <slots>1</slots><tasks>2</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>2</JB_job_number><JAT_prio>0.00000</JAT_prio><JB_name>arr</JB_name><JB_owner>root</JB_owner>
      <state>qw</state><JB_submission_time>2026-12-07T23:38:35</JB_submission_time><queue_name></queue_name>
      <slots>1</slots><tasks>3-5:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>20</JB_job_number><JAT_prio>0.50000</JAT_prio><JB_name>trap.sh</JB_name><JB_owner>root</JB_owner>
      <state>Eqw</state><JB_submission_time>2026-12-08T00:20:12</JB_submission_time><queue_name></queue_name>
      <slots>1</slots><tasks>1,2</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>28</JB_job_number><JAT_prio>0.00000</JAT_prio><JB_name>heldarr</JB_name><JB_owner>root</JB_owner>
      <state>hqw</state><JB_submission_time>2026-12-07T23:43:22</JB_submission_time><queue_name></queue_name>
      <slots>1</slots><tasks>1-3:1</tasks>
    </job_list>
  </job_info>
</job_info>
"""

# Recorded: qacct -j of a task deleted while it ran (qdel), then of one killed at its h_rt (fields cut).
QACCT = """==============================================================
qname        all.q
jobnumber    15
taskid       1
failed       25  : rescheduling
exit_status  0
==============================================================
qname        all.q
jobnumber    15
taskid       1
failed       100 : assumedly after job
exit_status  137                  (Killed)
==============================================================
qname        all.q
jobnumber    15
taskid       2
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
"""


def sge_source(cluster, name: str = "sge", slots: int = 500, **kwargs) -> SGEComputeSource:
    return SGEComputeSource(name, slots, queue=cluster.queue, sge_env=cluster.sge_env, poll_interval=0.3, **kwargs)


# -- Grid Engine's words, without a server ----------------------------------------------------

def test_sge_state_letters_map_to_job_states():
    states = sge_tasks.SGE_STATES
    assert [states.get(w) for w in ("qw", "hqw", "Rq", "hRwq")] == [JobState.QUEUED] * 4
    assert [states.get(w) for w in ("t", "r", "Rr", "Rt", "dr", "s")] == [JobState.RUNNING] * 6
    assert states.get("Eqw") == JobState.FAILED and states.get("Ehqw") == JobState.FAILED  # read letter by letter
    assert states.get("dRr") == JobState.RUNNING and states.get("") is None and states.get("?!") is None


def test_qstat_xml_records_stand_for_each_task_of_the_arrays_asked_about():
    seen = sge_tasks.parse_qstat(QSTAT_XML, {"2", "20"})
    assert seen == {"2.1": ("r", ""), "2.2": ("t", ""), "2.3": ("qw", ""), "2.4": ("qw", ""), "2.5": ("qw", ""),
                    "20.1": ("Eqw", ""), "20.2": ("Eqw", "")}  # job 28 is not ours
    assert list(sge_tasks.task_range("1-9:4,12")) == [1, 5, 9, 12]


def test_qacct_says_how_a_task_that_left_no_exit_code_ended():
    records = sge_tasks.parse_qacct(QACCT)
    tasks = sge_tasks.SGETasks(sge_tasks.SGE_STATES, "SGE", "qdel")
    assert records["1"]["failed"].startswith("100")  # the latest record of a requeued task
    assert tasks.accounted("15.1", records["1"]) == (sge_tasks.DELETED, "")
    assert tasks.accounted("15.2", records["2"]) == (sge_tasks.LIMIT, "")
    assert tasks.accounted("15.3", None) == (sge_tasks.ACCOUNTING, "")  # not written yet: asked again
    tasks.accounting_wait = 0
    assert tasks.accounted("15.3", None) is None  # never written: LOST, in words
    assert "no record" in tasks.note("15.3", JobState.LOST)


def test_resources_render_as_grid_engine_options():
    spec = ResourceSpec(walltime="90", cpus=4, mem="16G", gpus=1, partition="gpu.q", account="lab",
                        extra={"P": "sweeps", "notify": None, "l": "arch=lx-amd64"})
    assert sge_module.sge_lines(spec, pe="threads", gpu_resource="ngpus") == [
        "#$ -q gpu.q",
        "#$ -l h_rt=1:30:00,h_vmem=4096M,ngpus=1",  # 90 minutes as Slurm reads it; 16G over 4 slots
        "#$ -pe threads 4",
        "#$ -A lab",
        "#$ -P sweeps",
        "#$ -notify",
        "#$ -l arch=lx-amd64",
    ]
    assert sge_module.sge_options(ResourceSpec(walltime="1-00:00:30")) == [["-l", "h_rt=24:00:30"]]


@pytest.mark.parametrize("spec, field", [
    (ResourceSpec(walltime="two hours"), "walltime"),
    (ResourceSpec(mem="4.5G"), "mem"),
    (ResourceSpec(cpus=0), "cpus"),
    (ResourceSpec(qos="high"), "qos"),
    (ResourceSpec(constraint="a100"), "constraint"),
    (ResourceSpec(gpus=1, gpu_type="a100"), "gpu_type"),
    (ResourceSpec(srun=True), "srun"),
    (ResourceSpec(partition="all.q; rm -rf ~"), "partition"),
    (ResourceSpec(extra={"-l": "x=1"}), "extra"),
    (ResourceSpec(extra={"l": "x='1 2'"}), "extra.l"),
])
def test_a_bad_resource_is_refused_when_the_source_is_made(spec, field):
    with pytest.raises(ConfigError) as info:
        SGEComputeSource("s", 1, resources=spec)
    assert info.value.field == field


def test_the_array_script_runs_the_manifest_line_of_its_one_based_task(tmp_path):
    """Task ``i`` (SGE counts from 1) runs line ``i`` of the manifest, writes ``JOB.TASK`` first, and a
    rerun (RESTARTED=1) is marked as a requeue for the wrapper."""
    source = SGEComputeSource("s", 2)
    source.tasks_dir, source.slurm_dir = str(tmp_path / "tasks"), str(tmp_path / "sge")
    (tmp_path / "jobs").write_text("first-1\nsecond-1\n")
    for name in ("first-1", "second-1"):
        (tmp_path / "tasks" / name).mkdir(parents=True)
        (tmp_path / "tasks" / name / "run.sh").write_text('echo "$SLURM_RESTART_COUNT" > "$(dirname "$0")/ran"\n')
    script = source.render_array("hsm-demo x", str(tmp_path / "jobs"))
    assert "#$ -N hsm-demo_x" in script  # a name Grid Engine takes
    env = {"PATH": os.environ["PATH"], "JOB_ID": "7", "SGE_TASK_ID": "2", "RESTARTED": "1"}
    subprocess.run(["sh", "-c", script], env=env, check=True)
    assert (tmp_path / "tasks" / "second-1" / "slurm_id").read_text().strip() == "7.2"
    assert (tmp_path / "tasks" / "second-1" / "ran").read_text().strip() == "1"
    assert not (tmp_path / "tasks" / "first-1" / "ran").exists()


# -- against the real Grid Engine ------------------------------------------------------------

def test_a_throttled_array_sweep_is_one_qsub_and_one_qstat_per_poll(workdir, sge):
    source = sge_source(sge, slots=4)
    polls: list[int] = []
    poll = source.poll

    async def counting(job_ids):  # a spy: one call per poll
        polls.append(len(job_ids))
        return await poll(job_ids)

    source.poll = counting
    sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": list(range(20))}), poll_interval=0.3).run()
    assert sorted(sweep.results()["score"]) == [2.0 * x for x in range(20)]
    assert source.commands["qsub"] == 1  # one array for all 20 (the setup check counts as "other")
    assert source.commands["qstat"] == len(polls)  # one qstat -xml per poll, whatever the number of tasks
    assert sweep.status()["job_id"].str.split(".").str[0].nunique() == 1  # tasks of one array: ARRAY.INDEX


def test_exit_codes_pending_reasons_and_one_qdel_for_the_whole_array(workdir, sge):
    source = sge_source(sge, array_throttle=1, reason_interval=1.0)
    space = ParameterSpace(combinations=[{"x": 1, "exit": 3, "sleep": 0}, {"x": 2, "exit": 0, "sleep": 60},
                                         {"x": 3, "exit": 0, "sleep": 60}])
    sweep = job_sweep(workdir, [source], space, poll_interval=0.3).start()
    try:
        until(lambda: sweep.status().set_index("x").loc[1, "state"] == "FAILED", what="x=1 failed")
        row = sweep.status().set_index("x").loc[1]
        assert row["exit_code"] == 3 and "something went wrong in task 1" in row["error"]
        # -tc 1: one task runs, the other waits with Grid Engine's reason
        until(lambda: "max_aj_instances" in str(sweep.status().set_index("x").loc[3, "detail"]),
              what="the pending reason")
        assert sweep.status().set_index("x").loc[3, "state"] == "QUEUED"
        before = source.commands["qdel"]
        sweep.cancel()
        sweep.wait(timeout=60)
    finally:
        if sweep.running:
            sweep.cancel()
    assert sweep.counts() == {"FAILED": 1, "CANCELLED": 2}
    assert source.commands["qdel"] - before == 1  # the array by its id: its pending task never starts
    until(lambda: not sge.active_jobs(), 30, "Grid Engine holding no job of the sweep")
    folder = sweep.directory / "tasks" / sweep.status().set_index("x").loc[3, "job_name"]
    assert (folder / "pid").read_text().strip() == "never"  # claimed: it can never start now


def test_grid_engine_refuses_resources_in_its_own_words(workdir, sge_cluster):
    source = SGEComputeSource("s", 2, queue="no_such.q", sge_env=sge_cluster.sge_env)
    with pytest.raises(SourceError, match=r"Grid Engine refuses these resources: .*unknown queue"):
        job_sweep(workdir, [source], [1]).run()
    source = sge_source(sge_cluster, resources=ResourceSpec(gpus=3))  # the host offers gpu=2
    with pytest.raises(SourceError, match=r"Grid Engine refuses these resources: .*no suitable queue"):
        job_sweep(workdir, [source], [1]).run()


def test_slots_memory_time_and_gpus_reach_grid_engine(workdir, sge):
    (workdir / "where.py").write_text(textwrap.dedent("""
        import os, subprocess
        from hsm_notebook.metrics import log_metrics
        job = subprocess.run(["qstat", "-j", os.environ["JOB_ID"]], capture_output=True, text=True).stdout
        hard = next(line.split(":", 1)[1].strip() for line in job.splitlines() if line.startswith("hard resource_list"))
        log_metrics(slots=int(os.environ["NSLOTS"]), hard=hard)
    """))
    source = sge_source(sge, resources=ResourceSpec(cpus=2, mem="1G", walltime="10", gpus=1))
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "where.py"], [source], workdir=workdir,
                  poll_interval=0.3).run()
    row = sweep.results().iloc[0]
    assert row["slots"] == 2
    assert sorted(row["hard"].split(",")) == ["gpu=1", "h_rt=600", "h_vmem=512M"]  # 10 minutes; 1G over 2 slots


def test_sge_through_an_ssh_login_node(workdir, sge_cluster, ssh_host):
    from tests.contract.conftest import ssh_source

    login = ssh_source(ssh_host, "login", 1)
    source = SGEComputeSource("hpc", 100, queue=sge_cluster.queue, login=login, poll_interval=0.3,
                              sge_env=sge_cluster.sge_env)
    (workdir / "job.py").write_text(
        "import getpass, os, sys\nfrom hsm_notebook.metrics import log_metrics\n"
        "log_metrics(x=int(sys.argv[1].split('=')[1]), user=getpass.getuser(), dir=os.environ['HSM_TASK_DIR'])\n")
    sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": list(range(6))}), poll_interval=0.3).run()
    results = sweep.results()
    assert sorted(results["x"]) == list(range(6)) and set(results["user"]) == {ssh_host.user}
    assert results["dir"].str.startswith(f"/home/{ssh_host.user}/").all()
    assert source.commands["qsub"] == 1  # one array, through the SSH connection
    job = sweep.status()["job_name"].iloc[0]
    assert (sweep.directory / "tasks" / job / "stdout.log").exists()  # collected over SSH
    again = Sweep.attach(sweep.directory, resume=False)  # rebuilt from the record, login node and all
    assert isinstance(again.sources[0], SGEComputeSource) and again.sources[0].login.target.port == ssh_host.port


def test_the_panel_adds_a_grid_engine_cluster_and_launches_on_it(workdir, sge, tmp_path, monkeypatch):
    import html

    from hsm_notebook.ui import SweepPanel

    for key, value in sge.sge_env.items():
        monkeypatch.setenv(key, value)  # as on a login node: the commands find their cell
    panel = SweepPanel(sources=[], refresh_interval=0.1, directory=tmp_path / "s")
    try:
        panel.sources_view.kind.value = "Grid Engine cluster"
        form = panel.sources_view.form
        form.walltime.value = "two hours"
        panel.sources_view.add_button.click()
        assert "walltime" in html.unescape(panel.message.value)
        form.walltime.value, form.queue.value, form.cpus.value = "10", sge.queue, "1"
        panel.sources_view.add_button.click()
        assert [s.source_type for s in panel.sources_view.sources] == ["sge"]
        panel.editor.command.value = "python job.py"
        panel.editor.workdir.value = str(workdir)
        panel.editor.rows[0][0].value, panel.editor.rows[0][1].value = "x", "range(4)"
        panel.launch_button.click()
        panel.sweep.wait(timeout=60)
        assert panel.sweep.counts() == {"COMPLETED": 4}
    finally:
        panel.close()


def test_qstat_xml_with_values_grid_engine_left_unescaped_is_still_read():
    from hsm_notebook.sources.sge_tasks import _xml

    printed = ("<?xml version='1.0'?>\n<detailed_job_info><djob_info><element><JB_job_number>7</JB_job_number>"
               "<VA_value>a&b x<3 \x1b[0m</VA_value></element></djob_info></detailed_job_info>")
    root = _xml(printed, "qstat -j -xml")  # Grid Engine prints a job's environment as it is
    assert root.find(".//JB_job_number").text == "7"
    assert root.find(".//VA_value").text == "a&b x<3 [0m"
