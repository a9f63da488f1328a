#!/usr/bin/env bash
# Every GPU check of the pipeline and the index on a CUDA machine, within about 8 minutes:
# the GPU tests (they skip without CUDA), then bench_gpu_decode.py on 320-px and 500x375 JPEGs
# with ViT-B-32 random weights (decode rate of the CPU pool vs the GPU, whole job with and
# without --gpu-decode, raw forward, ratios).
#
#   bench/gpu_check.sh            # from the repository root or anywhere; PYTHON picks the venv
#   IMAGES=4096 bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
IMAGES=${IMAGES:-8192}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; print('torch', torch.__version__, torch.cuda.get_device_name())"
status=0
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" -rs \
  tests/test_gpu_decode.py tests/test_gpu_path.py tests/test_faiss_gpu.py || status=$?
for size in 320x320 500x375; do
  echo "== bench_gpu_decode.py --size $size --images $IMAGES"
  timeout 150 "$PYTHON" bench/bench_gpu_decode.py --size "$size" --images "$IMAGES" || status=$?
done
exit "$status"
