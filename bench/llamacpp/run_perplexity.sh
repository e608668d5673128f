#!/usr/bin/env bash
# Runs llama-perplexity on hamlet.txt for the reference models, one after another
# (full file and first 4 chunks), saving full logs to $OUT (default $DINO_PEER_DIR/ppl-logs).
# Then: python3 bench/llamacpp/parse_perplexity.py $OUT > crates/dino-testutil/data/reference/perplexity.json
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
MODELS_DIR="${DINO_MODELS:-$HOME/.cache/dino-models}"
TEXT="${DINO_PPL_TEXT:-$HERE/../../../shared/text/hamlet.txt}"
[ -f "$TEXT" ] || TEXT=/work/shared/text/hamlet.txt
TEXT="$(realpath "$TEXT")"
OUT="${1:-$DINO_PEER_DIR/ppl-logs}"
THREADS="${THREADS:-2}"
mkdir -p "$OUT"
for stem in SmolLM2-135M-Instruct.Q4_1 Qwen2.5-Coder-0.5B-Instruct.Q4_K_M gemma-3-270m-Q4_K_M; do
  for mode in chunks4 full; do
    extra=(); [ "$mode" = chunks4 ] && extra=(--chunks 4)
    log="$OUT/$stem.$mode.log"
    if [ -s "$log" ] && grep -q "Final estimate" "$log"; then echo "skip $log"; continue; fi
    cmd=(llama-perplexity -m "$MODELS_DIR/$stem.gguf" -f "$TEXT" -c 512 -t "$THREADS" "${extra[@]}")
    echo "# cmd: ${cmd[*]}" > "$log"
    echo "running: ${cmd[*]}"
    /usr/bin/time -v "${cmd[@]}" >> "$log" 2>&1
  done
done
echo "logs in $OUT"
