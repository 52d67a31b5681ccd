#!/usr/bin/env bash
# Run every benchmark and print its figures. Each compares against a
# baseline measured in the same run. Set up the machine first (scripts/setup
# does; this script calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup >/dev/null
py=.venv/bin/python
echo "build-scheduler benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)"
echo
for bench in dispatch latency queue_scale many_workers logs end_to_end git_mirror affinity; do
  "$py" "bench/$bench.py"
done
"$py" bench/failure_detection.py
