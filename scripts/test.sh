#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (run as root),
# then run the whole suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(openssh-server rsync slurm-wlm munge chromium environment-modules)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Grid Engine (Son of Grid Engine 8.1.9) for the sge tests: the packages' postinst makes the cell
# for this host when the master's name is preseeded.  Their init scripts must not start the daemons
# (tests/servers/sge.py starts and stops them): a policy-rc.d refusing them is added while installing
# when the machine has none.
sge_packages=(gridengine-master gridengine-exec gridengine-client)
sge_missing=()
for p in "${sge_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || sge_missing+=("$p")
done
if ((${#sge_missing[@]})); then
  echo "installing Grid Engine: ${sge_missing[*]}"
  for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
    printf '%s shared/gridenginemaster string %s\n%s shared/gridenginecell string default\n' "$p" "$(hostname)" "$p"
    printf '%s shared/gridengineconfig boolean true\n' "$p"
  done | debconf-set-selections
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${sge_packages[@]}" >/dev/null
  [ "$policy_added" = 0 ] || rm -f /usr/sbin/policy-rc.d
fi

# editable_mode=compat: a plain .pth entry, so every job's interpreter starts without
# an import-hook finder (measured: ~14 ms less per Python process).
python3 -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat

# Checks before tests: lint (pyflakes, pycodestyle, bugbear, imports, pyupgrade) and types, as
# configured in pyproject.toml; either failing fails the script before any test runs.
echo "ruff check"
python3 -m ruff check hsm_notebook tests bench conftest.py
echo "mypy"
python3 -m mypy

set +e
python3 -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: the suite is missing or every test was deselected" >&2
  exit 1
fi
exit "$rc"
