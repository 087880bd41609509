#!/usr/bin/env bash
# diffusers for a machine that reaches no package index, carried as wheels in .whl/ (git-ignored).
#   bash examples/diffusers_wheels.sh download   # where an index is reachable: diffusers and its
#                                                # dependencies for CPython ${PYVER:-3.12} on x86-64 Linux
#   bash examples/diffusers_wheels.sh install    # on the other machine, with .whl/ sent along:
#                                                # installs diffusers (and only what is missing) from it
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
download)
  python3 -m pip download -q "diffusers>=0.35" --only-binary=:all: --python-version "${PYVER:-3.12}" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl
  du -sh .whl
  ;;
install)
  python3 -c "import diffusers" 2>/dev/null ||
    python3 -m pip install -q --no-index --find-links .whl "diffusers>=0.35"
  python3 -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__)"
  ;;
*)
  sed -n 2,6p "$0"; exit 2
  ;;
esac
