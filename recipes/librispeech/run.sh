#!/usr/bin/env bash
# LibriSpeech recipe, in stages (run from anywhere; works in the project root):
#   0 download   official archives of openslr resource 12 (checksum verified, resumed, retried), extracted
#   1 manifests  <data_dir>/librispeech/<subset>.jsonl + rejected.jsonl (durations from FLAC headers)
#   2 check      data check: hours, durations, characters vs tokenizer, utterances too short for CTC
#   3 tokenizer  trains the SentencePiece model when tokenizer=bpe (nothing to do for characters)
#   4 train      exp/<recipe>/run/ (resumes from last.ckpt when rerun)
#   5 evaluate   WER table for dev-clean dev-other test-clean test-other
#
#   recipes/librispeech/run.sh                                  # everything, librispeech-100h
#   recipes/librispeech/run.sh --stage 0 --stop-stage 2         # just download and prepare
#   recipes/librispeech/run.sh --recipe librispeech-960h -- trainer.devices=8 tokenizer=bpe
#   recipes/librispeech/run.sh -- data.root=/datasets/LibriSpeech   # an existing copy, no download
# Anything after the options (or after --) is a Hydra override given to every stage.
# Every stage skips work already done (markers under <data_dir>/librispeech/.done, <run dir>/.train.done).
set -euo pipefail

stage=0
stop_stage=5
recipe=librispeech-100h
run_dir=""
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --stage N --stop-stage N --recipe NAME --run-dir DIR"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --recipe) recipe=$2; shift 2 ;;
    --run-dir) run_dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    --*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
overrides=("$@")

cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
[[ -x $py ]] || py=python3
run_dir=${run_dir:-exp/$recipe/run}

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') [$recipe] $*"; }
in_range() { (( stage <= $1 && $1 <= stop_stage )); }

for n in 0 1 2 3; do
  name=(download manifests check tokenizer)
  if in_range "$n"; then
    log "stage $n: ${name[$n]}"
    "$py" -m asr.prepare recipe="$recipe" stage="${name[$n]}" ${overrides[@]+"${overrides[@]}"}
  fi
done

if in_range 4; then
  if [[ -f $run_dir/.train.done ]]; then
    log "stage 4: train: $run_dir/.train.done exists, skipped (delete it to train again)"
  else
    log "stage 4: train -> $run_dir"
    "$py" -m asr.train recipe="$recipe" hydra.run.dir="$run_dir" resume=auto ${overrides[@]+"${overrides[@]}"}
    touch "$run_dir/.train.done"
  fi
fi

if in_range 5; then
  log "stage 5: evaluate $run_dir/checkpoints/best.ckpt"
  "$py" -m asr.evaluate checkpoint="$run_dir/checkpoints/best.ckpt"
fi
log "stages $stage..$stop_stage done"
