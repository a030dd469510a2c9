#!/usr/bin/env bash
# The GPU check (Chapter 3): on one CUDA GPU, in under 5 minutes,
#   1. every chapter notebook in fast mode, in plain Python;
#   2. the MAML speed benchmark (Conv4 and sinusoids, 1 and 5 inner steps, both orders),
#      mlbook against learn2learn and higher when they are importable;
#   3. the memory study on CUDA (fewer inner steps).
# Run from the repository root:  bash benchmarks/gpu_check.sh
# The peers are never project dependencies. On a GPU image that already holds torch and
# torchvision, put them in a folder of their own and on PYTHONPATH, for example:
#   pip install --no-deps --target /tmp/peers higher==0.2.1 gym==0.26.2 gym_notices==0.1.0
#   (learn2learn 0.2.0 from its sdist with regenerated Cython sources, as benchmarks/maml_speed.py
#    describes, then: pip install --no-build-isolation --no-deps --target /tmp/peers <its folder>)
#   PYTHONPATH=/tmp/peers bash benchmarks/gpu_check.sh
# Outputs go to $OUT when it is set (else benchmarks/results/gpu); PYTHON picks the interpreter.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEST=${OUT:-benchmarks/results/gpu}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$DEST/gpu.txt"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)" \
  || { echo "no CUDA GPU: nothing to check"; exit 1; }
echo "== 1. chapters (fast mode)"
MLBOOK_FAST=1 timeout 150 "$PYTHON" benchmarks/run_chapters.py 2>&1 | tee "$DEST/chapters.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== 2. speed benchmark"
timeout 200 "$PYTHON" benchmarks/maml_speed.py --device cuda --rounds 3 --batches 2 --strategies \
  --json "$DEST/maml_speed_cuda.json" 2>&1 | grep -v -i gym | tee "$DEST/maml_speed_cuda.txt" || status=1
echo "== 3. memory study"
timeout 60 "$PYTHON" benchmarks/memory_study.py --device cuda --steps 1,2,4,8 --meta-batch 8 --repeats 1 \
  --channels 64 --out "$DEST/memory_study_cuda.json" 2>&1 | tee "$DEST/memory_study_cuda.txt" || status=1
exit $status
