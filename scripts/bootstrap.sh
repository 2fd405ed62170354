# Sourced by the other scripts: creates a virtual environment (Python 3.11 or newer) and installs
# the project (with its web and outbox extras) and the dependency group named in $1 into it, from
# PyPI. $2 names the environment (default .venv); $3, a pip constraints file to install with
# (scripts/test builds .venv-lowest from constraints-lowest.txt: the lowest supported versions).
# A later run installs again only when pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
venv=${2:-.venv}
constraints=${3:-}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "notifier needs Python 3.11 or newer: set PYTHON=/path/to/python3.11" >&2; exit 1; }
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$1"
wanted=$(cat pyproject.toml ${constraints:+"$constraints"} | "$venv/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "installing notifier and its '$1' dependencies into $venv${constraints:+ (with $constraints)}..."
    # Dependency groups need pip 25.1 or newer.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --editable ".[web,outbox]" --group "$1" ${constraints:+--constraint "$constraints"}
    echo "$wanted" > "$stamp"
fi
