#!/usr/bin/env bash
# The GPU check (Chapter 3): on one CUDA GPU, each part under its own time limit:
#   tests    the tests that need CUDA (recorded meta-steps, chunk sizes from free memory), ~1 min;
#   speed    the MAML speed benchmark (Conv4 and sinusoids, 1 and 5 inner steps, both orders):
#            mlbook, its CUDA-graph and memory-bounded variants, learn2learn and higher when
#            they are importable; FLOP/s against the device's measured peak, ~4 min;
#   lake     the README's Lake command (read from the registry) with --time-limit $LAKE_SECONDS
#            (default 90; 420 fits a 10-minute call with its two scorings) and its proxy error,
#            plainly and with the nine views, when Omniglot is found, ~3 min;
#   chapters every chapter notebook in fast mode, in plain Python, ~2.5 min;
#   memory   the memory study on CUDA (fewer inner steps), ~1 min.
# Run from the repository root:  PARTS="tests speed" bash benchmarks/gpu_check.sh  (default: all)
# The peers are never project dependencies. On a GPU image that already holds torch and
# torchvision, put them in a folder of their own and on PYTHONPATH, for example:
#   pip install --no-deps --target /tmp/peers higher==0.2.1 gym==0.26.2 gym_notices==0.1.0
#   (learn2learn 0.2.0 from its sdist with regenerated Cython sources, as benchmarks/maml_speed.py
#    describes, built into a wheel for the GPU machine's Python, then
#    pip install --no-deps --target /tmp/peers <that wheel>)
#   PYTHONPATH=/tmp/peers bash benchmarks/gpu_check.sh
# Outputs go to $OUT when it is set (else benchmarks/results/gpu); PYTHON picks the interpreter.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEST=${OUT:-benchmarks/results/gpu}
PARTS=${PARTS:-tests speed lake chapters memory}
LAKE_SECONDS=${LAKE_SECONDS:-90}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
wanted() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$DEST/gpu.txt"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)" \
  || { echo "no CUDA GPU: nothing to check"; exit 1; }
if wanted tests; then
  echo "== tests that need CUDA"
  # addopts cleared: the project's own name nbval, which a GPU image need not have.
  timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_graphs.py \
    tests/test_learner_contract.py -k "graph or cuda or gpu or views" 2>&1 | tee "$DEST/tests_cuda.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if wanted speed; then
  echo "== speed benchmark"
  timeout 330 "$PYTHON" benchmarks/maml_speed.py --device cuda --rounds 3 --batches 2 \
    --json "$DEST/maml_speed_cuda.json" 2>&1 | grep -v -i gym | tee "$DEST/maml_speed_cuda.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if wanted lake; then
  if [ -n "${MLBOOK_OMNIGLOT:-}" ]; then
    echo "== the README's Lake command, $LAKE_SECONDS s on the GPU"
    run=$(mktemp -d)/lake.pt
    # The command comes from the registry, so this part follows the README's command when it changes;
    # only the time limit, the step cap and the device differ.
    mapfile -t lake_args < <("$PYTHON" - "$LAKE_SECONDS" <<'PY'
import sys
import mlbook.reference as reference
changes = {"--time-limit": sys.argv[1], "--steps": "1000000", "--checkpoint-every": "1000"}
print("\n".join(reference._with_changes(reference.get(reference.LAKE_README_RUN).train_args, changes)))
PY
)
    [ "${#lake_args[@]}" -gt 0 ] || { echo "cannot read the README's Lake command from the registry"; exit 1; }
    shift_px=$("$PYTHON" -c "import mlbook.reference as r; print(r.LAKE_FRAME_TEST_TIME_SHIFT)")
    { timeout $((LAKE_SECONDS + 120)) "$PYTHON" -m mlbook train "${lake_args[@]}" --device cuda --out "$run" \
      && timeout 120 "$PYTHON" -m mlbook lake "$run" --proxy --episodes 1000 --device cuda \
      && timeout 300 "$PYTHON" -m mlbook lake "$run" --proxy --episodes 1000 --test-time-shift "$shift_px" \
         --device cuda
    } 2>&1 | tr '\r' '\n' | grep -v "^meta-training" | tee "$DEST/lake_cuda.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  else
    echo "== Lake recipe skipped: MLBOOK_OMNIGLOT names no Omniglot folder"
  fi
fi
if wanted chapters; then
  echo "== chapters (fast mode)"
  MLBOOK_FAST=1 timeout 150 "$PYTHON" benchmarks/run_chapters.py 2>&1 | tee "$DEST/chapters.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if wanted memory; then
  echo "== memory study"
  timeout 60 "$PYTHON" benchmarks/memory_study.py --device cuda --steps 1,2,4,8 --meta-batch 8 --repeats 1 \
    --channels 64 --out "$DEST/memory_study_cuda.json" 2>&1 | tee "$DEST/memory_study_cuda.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
exit $status
