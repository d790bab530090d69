#!/usr/bin/env bash
# Every transformers release setup.py admits, one after another in one venv (torch's CPU wheel): the tests
# that pin RetroLM to the plain model (greedy equivalence, no silent fallback, checkpoints). `make test` covers
# the two ends of the range in full; this covers the releases between them. Run: make test-matrix
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-matrix
if [ ! -x "$VENV/bin/python" ]; then
    ${PYTHON:-python3} -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r .ci/dev.txt
    "$VENV/bin/python" -m pip install -q -e ".[dev,cpu]" -c .ci/dev.txt
fi
range=$(sed -n 's/.*"transformers\(>=[^"]*\)".*/\1/p' setup.py)
versions=$("$VENV/bin/python" - "$range" <<'PY'
import json, subprocess, sys
from packaging.specifiers import SpecifierSet
from packaging.version import Version
out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "transformers"], capture_output=True, text=True).stdout
listed = out.split("Available versions:")[1].split("\n")[0]
spec = SpecifierSet(sys.argv[1])
print(" ".join(str(v) for v in sorted({Version(x.strip()) for x in listed.split(",")}) if v in spec and not v.is_prerelease))
PY
)
echo "transformers releases in $range: $versions"
for version in $versions; do
    "$VENV/bin/python" -m pip install -q "transformers==$version"
    result=$("$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_equivalence.py tests/test_no_silent_fallback.py \
             tests/test_checkpoints.py tests/test_bad_input.py 2>&1 | tail -1)
    echo "transformers $version: $result"
done
