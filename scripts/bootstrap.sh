# Sourced by the other scripts: creates .venv (Python 3.11 or newer) and installs the project
# (with its web extra) and the dependency group named in $1 into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "notifier needs Python 3.11 or newer: set PYTHON=/path/to/python3.11" >&2; exit 1; }
    "$python" -m venv .venv
fi
# Dependency groups need pip 25.1 or newer.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".[web]" --group "$1"
