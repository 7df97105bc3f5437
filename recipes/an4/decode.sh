#!/usr/bin/env bash
# AN4 decoding stages for a trained checkpoint: LM from training transcripts, greedy / beam / beam+LM on test,
# LM-weight x word-score sweep on dev (the cached log-probs make it one forward pass); then a spelling LM
# (the transcripts plus common English words spelled out letter by letter) and its lm_weight sweep.
#
#   recipes/an4/decode.sh exp/an4/<run>/checkpoints/best.ckpt [--stage N] [--stop-stage N]
#
# A stage whose marker exists under <run dir>/decode/.done.<stage> is skipped; delete it to rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."
ckpt=${1:?usage: recipes/an4/decode.sh CKPT [--stage N] [--stop-stage N]}
shift
stage=1
stop_stage=6
while [ $# -gt 0 ]; do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-.venv/bin/python}
data=${DATA:-data/an4}
run_dir=$(dirname "$(dirname "$(realpath "$ckpt")")")
done_dir=$run_dir/decode
lm_args="decoder.lexicon=$data/lm/lexicon.txt decoder.lm=$data/lm/3-gram.arpa"
words=${WORDS:-data/lm/words.en.txt}  # wordfreq's most frequent English words (python -m asr.lm.wordlist)
splits="manifests={dev: $data/dev.jsonl, test: $data/test.jsonl}"
mkdir -p "$done_dir"

log() { echo "$(date '+%F %T') stage $1: $2"; }
run_stage() {  # run_stage N description command...
  local n=$1 what=$2; shift 2
  if [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ]; then
    if [ -f "$done_dir/.done.$n" ]; then log "$n" "$what: done before, skipped"; return; fi
    log "$n" "$what"
    "$@"
    touch "$done_dir/.done.$n"
  fi
}

run_stage 1 "lexicon + word 3-gram LM from $data/train.jsonl" \
  "$py" -m asr.lm manifest="$data/train.jsonl" out_dir="$data/lm" order=3
run_stage 2 "greedy on dev/test" "$py" -m asr.evaluate checkpoint="$ckpt" "$splits" device=cpu decoder=greedy
run_stage 3 "lexicon-free beam search on dev/test" \
  "$py" -m asr.evaluate checkpoint="$ckpt" "$splits" device=cpu decoder=beam
run_stage 4 "beam + LM, sweep of lm_weight x word_score on dev/test (pick on dev)" \
  "$py" -m asr.evaluate -m checkpoint="$ckpt" "$splits" device=cpu decoder=beam_lm $lm_args \
  decoder.lm_weight=0.5,1,1.5,2 decoder.word_score=-1,0,1

spelling_lm() {  # the word list, then a 6-gram of the transcripts (x10) and 50,000 words spelled out
  [ -s "$words" ] || "$py" -m asr.lm.wordlist out="$words" top=100000
  "$py" -m asr.lm manifest="$data/train.jsonl" out_dir="$data/lm_spell" order=6 \
    spell="$words" spell_top=50000 transcript_repeat=10
}
run_stage 5 "spelling 6-gram LM: $data/train.jsonl x10 + 50,000 words of $words spelled out" spelling_lm
run_stage 6 "beam + spelling LM (no lexicon), sweep of lm_weight on dev/test (pick on dev)" \
  "$py" -m asr.evaluate -m checkpoint="$ckpt" "$splits" device=cpu decoder=beam_lm decoder.lexicon=null \
  decoder.lm="$data/lm_spell/6-gram.arpa" decoder.word_score=0 decoder.lm_weight=0.25,0.5,1
