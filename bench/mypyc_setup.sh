#!/usr/bin/env bash
# The trioserve-mypyc server of bench/run.py: trioserve built with its hot modules
# compiled by mypyc (TRIOSERVE_MYPYC=1, docs/deployment.md, "The compiled build") into a
# venv of its own, .bench-mypyc/venv, and .bench-mypyc/run, a directory holding only a
# link to bench/, to run it from: in the checkout, `python -m trioserve` would import the
# pure source of the working directory instead. Run again after changing the source.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .bench-mypyc
python3 -m venv .bench-mypyc/venv
.bench-mypyc/venv/bin/pip install --quiet --upgrade pip
TRIOSERVE_MYPYC=1 .bench-mypyc/venv/bin/pip install --quiet '.[speed,metrics]'
mkdir -p .bench-mypyc/run
ln -s ../../bench .bench-mypyc/run/bench
cd .bench-mypyc/run && ../venv/bin/python -m trioserve --version
