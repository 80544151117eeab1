#!/usr/bin/env bash
# Runs the scikit-learn baseline and the Rust benches back to back, on the
# same machine in the same run, and prints both. Needs the Python packages of
# tests/fixtures/metrics/requirements.txt (installs them if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import sklearn, numpy" 2>/dev/null || pip install -q -r tests/fixtures/metrics/requirements.txt
mkdir -p target/bench-compare
echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "== scikit-learn (2 threads)"
python3 benches/python/bench_sklearn.py --threads 2 > target/bench-compare/sklearn.json
echo "== Rust (criterion)"
cargo bench --bench metrics -- --warm-up-time 2 --measurement-time 10 2>&1 \
  | grep -E '^[a-z_0-9]|time:' | tee target/bench-compare/rust.txt
