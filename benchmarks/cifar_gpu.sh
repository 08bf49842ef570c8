#!/usr/bin/env bash
# The GPU measurement of benchmarks/cifar.py at the paper's scale (width 1, ResNet-164), made to fit one
# lent GPU machine's time (see ../shared/data/README.md for shipping CIFAR-10 there in three parts; the last
# part's run calls this script). One process runs the three experiments in the order (VGG16 connect,
# VGG11 structured, ResNet-164 connect): one torch import and one data load, and an experiment that would start
# past the time limit is skipped. Each experiment's results land in $OUT (<name>.json) as soon as it finishes.
# Then, with at least 60 s left, benchmarks/metric_cost.py at VGG16's width 1 (the Gram matrix by both convolution
# rules side by side, each case's peak GPU memory) into $OUT/metric_cost.txt (its GPU time is not measured yet;
# the timeout bounds it).
#   usage (on the GPU machine, repository root):
#     OUT=dir bash benchmarks/cifar_gpu.sh [seconds, default 540] [experiments, default all three] [more cifar.py options]
#   e.g. the one a lease has not measured yet: OUT=dir bash benchmarks/cifar_gpu.sh 540 resnet-connect
set -u
OUT=${OUT:-gpu-results}
LIMIT=${1:-540}
EXPERIMENTS=${2:-vgg16-connect,structured,resnet-connect}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$OUT" /tmp/c10
(cd /tmp/c10 && cat part.a? | xz -d -T8 | tar x && md5sum cifar-10-batches-py/*) > "$OUT/md5.txt" 2>&1
if [ -d .whl ]; then  # the core's one dependency beyond PyTorch (pydantic), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
left() { echo $(( LIMIT - SECONDS )); }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# the last experiment starts only with at least 150 s left (ResNet-164's endpoints alone take about 80 s)
timeout $(( $(left) - 5 )) python3 benchmarks/cifar.py --profile gpu --data-dir /tmp/c10 --out "$OUT" \
  --experiments "$EXPERIMENTS" --time-limit $(( $(left) - 150 )) "$@" 2>&1 | tee "$OUT/log.txt"
if [ "$(left)" -ge 60 ]; then
  timeout $(( $(left) - 5 )) python3 benchmarks/metric_cost.py --model vgg16 --dataset cifar10 --data-dir /tmp/c10 \
    --repeats 5 > "$OUT/metric_cost.txt" 2>&1
fi
echo "total ${SECONDS} s" | tee -a "$OUT/log.txt"
