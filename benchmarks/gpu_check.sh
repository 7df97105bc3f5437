#!/usr/bin/env bash
# The GPU check: what one H100/H200 does with this code, in at most ~8 minutes, with no network.
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine, from the repo root
#   DRY=1 OUT=/tmp/o bash benchmarks/gpu_check.sh    # CPU dry run, tiny shapes, ~1 minute (tests/test_gpu_check.py)
#
# Phases (each under its own timeout; results in $OUT, default /tmp/gpu-check, 7 files).
# On the GPU the timeouts and the model phase's budget keep the check within ~8 minutes; a dry run
# (a test on a shared CPU) has no budget and a 600 s hang guard per phase: slower, never different.
#   0 env     GPU, driver, torch / torchaudio / Lightning / CUDA / cuDNN versions                      -> env.txt
#   1 model   the 960 h shape (conv x4 + 5 x BiLSTM-1024 + 29 characters) on synthetic audio: LSTM kernels and dtype
#             under bf16, packed vs dense parity, bf16 gradient error, the host syncs of one step, training steps
#             (5/15/35 s utterances, fp32/bf16, packed/dense, 600/2400 s batches): ms/step, audio-s/s, peak GiB
#                                                                   -> model.log, model.json (benchmarks/gpu_check.py)
#   2 loader  FLAC decode and speed-perturbation resampling per core, the loader with 1..14 workers      -> loader.log
#   3 AN4     python -m asr.train recipe=an4 in bf16-mixed for 6 epochs, then resume=auto to 8 (dry: recipe=tiny,
#             1 epoch then 2)                                                   -> an4.log, an4_metrics.csv, an4_run.json
#
# Inputs under .devcheck/ (git-ignored; ../shared does not travel to the GPU machine):
#   .devcheck/ls/                  ../shared/data/librispeech-samples (FLAC + trans.txt)
#   .devcheck/an4_sphere.tar.gz    ../shared/data/an4_sphere.tar.gz
# and, where the machine lacks them, Python wheels under .whl/ (hydra-core omegaconf antlr4-python3-runtime jiwer
# rapidfuzz soundfile cffi pycparser), installed with pip --no-index into /tmp/site first.
# Read first: model.log's lstm_dispatch (cuDNN? bf16?), host_syncs, and the packed bf16 row at 15 s / 600 s.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DRY=${DRY:-0}
[[ -x .venv/bin/python ]] && DEFAULT_PY=$PWD/.venv/bin/python || DEFAULT_PY=python3  # `make install` made .venv here
PY=${PY:-$DEFAULT_PY}
OUT=${OUT:-/tmp/gpu-check}
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T0=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

# ----------------------------------------------------------------------------------------------- wheels
if [[ $DRY != 1 ]] && ls .whl/*.whl > /dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
       .whl/*.whl > "$WORK/pip.log" 2>&1; then
    export PYTHONPATH=/tmp/site
    log "wheels installed: $(ls .whl | tr '\n' ' ')"
  else
    log "wheels failed to install (the loader and AN4 phases need them):"; tail -n 3 "$WORK/pip.log"
  fi
fi

# ----------------------------------------------------------------------------------------------- phase 0: env
{
  date -u; uname -srm; echo "cpus $(nproc)"; free -g 2>/dev/null | head -2
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import torch, torchaudio
try:
    import pytorch_lightning as L
    lightning = L.__version__
except Exception as err:  # noqa: BLE001
    lightning = f"missing ({err})"
print("torch", torch.__version__, "torchaudio", torchaudio.__version__, "lightning", lightning)
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "SMs", p.multi_processor_count, "cc", p.major, p.minor,
          "bf16", torch.cuda.is_bf16_supported())
EOF
} > "$OUT/env.txt" 2>&1
log "env: $(tr '\n' ' ' < "$OUT/env.txt" | cut -c1-400)"

# ----------------------------------------------------------------------------------------------- phase 1: model
if [[ $DRY == 1 ]]; then MODEL=(--dry); MODEL_LIMIT=600  # no budget: every row, however slow
else MODEL=(--budget 170); MODEL_LIMIT=210; fi
log "phase 1: model"
timeout "$MODEL_LIMIT" "$PY" benchmarks/gpu_check.py model --json "$OUT/model.json" "${MODEL[@]}" \
  > "$OUT/model.log" 2>&1 || log "model phase exited $?"
grep -E "^[a-z_ ]+[:]|^(packed|dense)|done" "$OUT/model.log" | cut -c1-400

# ----------------------------------------------------------------------------------------------- phase 2: loader
AUDIO=.devcheck/ls
[[ -d $AUDIO ]] || AUDIO=../shared/data/librispeech-samples
if [[ ! -d $AUDIO && $DRY == 1 ]]; then  # a clone without ../shared: the AN4 fixture's SPHERE files
  mkdir -p "$WORK/an4x" && tar xzf tests/fixtures/an4_tiny/an4_sphere.tar.gz -C "$WORK/an4x" && AUDIO=$WORK/an4x
fi
if [[ $DRY == 1 ]]; then LOADER=(--dry); LOADER_LIMIT=600; else LOADER=(); LOADER_LIMIT=75; fi
log "phase 2: loader on $AUDIO"
timeout "$LOADER_LIMIT" "$PY" benchmarks/gpu_check.py loader "$AUDIO" "${LOADER[@]}" > "$OUT/loader.log" 2>&1 \
  || log "loader phase exited $?"
grep -v "^\s*$" "$OUT/loader.log" | cut -c1-200 | tail -n 14

# ----------------------------------------------------------------------------------------------- phase 3: AN4
RUN=$WORK/an4
if [[ $DRY == 1 ]]; then  # fp32: bf16 on a CPU without bf16 units is emulated, far too slow for a test
  TRAIN=(recipe=tiny "paths.data_dir=$WORK/data" trainer.accelerator=cpu trainer.devices=1 trainer.precision=32-true)
  EPOCHS=(1 2); LIMITS=(600 600)  # hang guards only
else
  TRAIN=(recipe=an4 "paths.download_dir=$ROOT/.devcheck" "paths.data_dir=$WORK/data" trainer.precision=bf16-mixed)
  EPOCHS=(6 8); LIMITS=(120 60)
fi
TRAIN+=("hydra.run.dir=$RUN" trainer.enable_progress_bar=false checkpoint.every_n_steps=20)
log "phase 3: ${TRAIN[0]} ${TRAIN[-4]}, ${EPOCHS[0]} epochs, then resume=auto to ${EPOCHS[1]}"
timeout "${LIMITS[0]}" "$PY" -m asr.train "${TRAIN[@]}" "trainer.max_epochs=${EPOCHS[0]}" > "$OUT/an4.log" 2>&1 \
  || log "training exited $?"
echo "===== resume=auto, trainer.max_epochs=${EPOCHS[1]} =====" >> "$OUT/an4.log"
timeout "${LIMITS[1]}" "$PY" -m asr.train "${TRAIN[@]}" "trainer.max_epochs=${EPOCHS[1]}" resume=auto \
  >> "$OUT/an4.log" 2>&1 || log "resume exited $?"
cp "$RUN/logs/metrics.csv" "$OUT/an4_metrics.csv" 2>/dev/null
cp "$RUN/run.json" "$OUT/an4_run.json" 2>/dev/null
"$PY" - "$OUT/an4_metrics.csv" <<'EOF' 2>&1 | tee -a "$OUT/an4.log"
import csv, statistics, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError as err:
    sys.exit(f"no metrics: {err}")
for key in ("perf/audio_sec_per_sec", "perf/data_wait", "perf/padding", "perf/gpu_mem_gb", "train/loss", "val/wer"):
    vals = [float(r[key]) for r in rows if r.get(key)]
    if vals:
        print(f"{key:<24} first {vals[0]:.4g}  last {vals[-1]:.4g}  median {statistics.median(vals):.4g}  n={len(vals)}")
EOF
grep -E "best.ckpt|^(dev|test) |Error|Traceback|resum|skipped" "$OUT/an4.log" | cut -c1-220 | head -n 25
rm -rf "$WORK"
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
