#!/usr/bin/env bash
# Run a demp sweep on a lent GPU machine (the `device` tool of this workplace) and pack the run
# summaries and metrics into $OUT.  The machine has PyTorch but not torch-pruning and no data, so
# both travel in the ignored folder .gpu/, prepared here once (19 MB in all):
#   echo /.gpu/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: -d .gpu/whl torch-pruning==1.6.1
#   xz -T2 -6e -c "$DEMP_DATA" > .gpu/cifar10-jpeg.zip.xz        # CIFAR-10's zip: 62 MB -> 19 MB
# and the device tool is called with carry [".gpu"].  Run here with OUT=/tmp/o and a short
# SECONDS to check the flow on CPU (the smoke runs then train on the CPU).
#   usage: benchmarks/gpu/sweep_on_gpu.sh SECONDS SWEEP.yaml:WORKERS [SWEEP.yaml:WORKERS ...]
# Runs the sweeps side by side on the one card into runs/sweeps-gpu/, stops them SECONDS after the start
# (the sweep resumes from its checkpoints if called again on the same machine), and writes
# $OUT/gpu.txt (the card and the software), $OUT/log.txt, $OUT/<sweep>.log and $OUT/runs.tgz (no weights).
set -u
start=$(date +%s)
limit=$1; shift
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site DEMP_CACHE=/tmp/demp-cache DEMP_DATA=/tmp/cifar10-jpeg.zip
[ -f "$DEMP_DATA" ] || xz -dc .gpu/cifar10-jpeg.zip.xz > "$DEMP_DATA" || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torch_pruning; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
log=$OUT/log.txt
# decode CIFAR-10 once into the cache (the sweep's worker processes then only read it), and a smoke run
python3 -c "from demp.app.data import load_dataset; load_dataset('cifar10')" >> "$log" 2>&1 || { tail -20 "$log"; exit 1; }
timeout 150 python3 -m demp.cli train --config configs/cpu/vgg16_cifar10_adamw.yaml --quiet --out /tmp/smoke \
  --set data.subset=4096 --set train.epochs=1 --set method.prune_every=8 --set method.target=0.5 >> "$log" 2>&1 \
  || { echo "smoke run failed"; tail -30 "$log"; exit 1; }
timeout 100 python3 -m demp.cli train --config configs/cpu/vgg16_cifar10_adamw.yaml --quiet --out /tmp/smoke-snap \
  --set data.subset=4096 --set train.epochs=1 --set method.name=snap --set method.target=0.5 >> "$log" 2>&1 \
  || { echo "smoke run (removal) failed"; tail -30 "$log"; exit 1; }
echo "smoke run ok after $(( $(date +%s) - start )) s"; cat /tmp/smoke/summary.json | head -c 600; echo
left=$(( limit - ($(date +%s) - start) ))
for arg in "$@"; do
  sweep=${arg%:*} workers=${arg##*:} name=$(basename "${arg%:*}" .yaml)
  ( timeout "$left" python3 -m demp.cli sweep "$sweep" --workers "$workers" --out "runs/sweeps-gpu/$name" > "$OUT/$name.log" 2>&1
    echo "$sweep: rc $? after $(( $(date +%s) - start )) s" ) &
done
wait
grep -h -E "^\[[0-9]+/" "$OUT"/*.log | tail -70
tar czf "$OUT/runs.tgz" --exclude='*.pt' runs/sweeps-gpu
ls -la "$OUT"
