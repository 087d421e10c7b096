"""The trivial job every benchmark runs: it writes a small metrics JSON into its task dir."""

JOB = """import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
with open(os.path.join(os.environ["HSM_TASK_DIR"], "metrics.json"), "w") as f:
    json.dump({"y": int(args["i"]) * 2}, f)
"""

#: A job that only sleeps (``sleep=SECONDS``, default 60): for measuring cancels and polling of
#: tasks that are still running or queued.
SLEEP_JOB = """import sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
time.sleep(float(args.get("sleep", 60)))
"""
