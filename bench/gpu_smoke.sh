#!/usr/bin/env bash
# GPU smoke run (CI has no GPU): trains the two-tower, the DCN-v2 ranker and the CTR DCN for a few hundred
# steps on CUDA and prints samples/s. Run on a machine with an NVIDIA GPU after `make install`:
#   bash bench/gpu_smoke.sh            # 300 steps per model, 1 rank (and 2 ranks when 2+ GPUs)
#   STEPS=100 bash bench/gpu_smoke.sh
# Mixed precision (bf16 autocast) is on for these CUDA training paths; NCCL joins the ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
STEPS="${STEPS:-300}"
"$PY" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_smoke: torch sees no CUDA device (torch " + torch.__version__ + ")")
print("gpu:", torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "torch", torch.__version__)
PY
RANKS=1
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then RANKS=1,2; fi
# two-tower and DCN-v2 ranker (recommender), per-rank batch 1024
"$PY" bench/train_distributed.py --device cuda --ranks "$RANKS" --batch 1024 --steps "$STEPS" --repeats 1
# the CTR model (strata ctr train --device cuda): STEPS batches of 1024 per rank in one epoch
"$PY" bench/ctr_scale.py --device cuda --ranks "$RANKS" --batch 1024 --rows "$((STEPS * 1280))" --repeats 1
