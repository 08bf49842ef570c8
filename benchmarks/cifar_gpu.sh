#!/usr/bin/env bash
# The GPU measurement of benchmarks/cifar.py at the paper's scale (width 1, ResNet-164), made to fit one
# lent GPU machine's time (see ../shared/data/README.md for shipping CIFAR-10 there in three parts; the last
# part's run calls this script). Each experiment's results land in $OUT as soon as it finishes.
#   usage (on the GPU machine, repository root): OUT=dir bash benchmarks/cifar_gpu.sh [seconds, default 540]
set -u
OUT=${OUT:-gpu-results}
LIMIT=${1:-540}
mkdir -p "$OUT" /tmp/c10
(cd /tmp/c10 && cat part.a? | xz -d -T8 | tar x && md5sum cifar-10-batches-py/*) > "$OUT/md5.txt" 2>&1
if [ -d .whl ]; then  # the core's one dependency beyond PyTorch (pydantic), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
left() { echo $(( LIMIT - SECONDS )); }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout $(( $(left) - 150 )) python3 benchmarks/cifar.py --profile gpu --data-dir /tmp/c10 --out "$OUT" \
  --experiments vgg16-connect,structured 2>&1 | tee "$OUT/log.txt"
timeout 40 python3 benchmarks/metric_cost.py --data-dir /tmp/c10 --model vgg16 --dataset cifar10 --repeats 10 \
  --train-batches 100 2>&1 | tee "$OUT/metric_cost.txt"
timeout $(( $(left) - 5 )) python3 benchmarks/cifar.py --profile gpu --data-dir /tmp/c10 --out "$OUT" \
  --experiments resnet-connect 2>&1 | tee -a "$OUT/log.txt"
echo "total ${SECONDS} s"
