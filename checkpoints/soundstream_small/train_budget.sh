#!/usr/bin/env bash
# Train SoundStream `small` within a wall-clock budget on one GPU: measure the step time with and without
# the discriminators (a 40-step probe), size `steps` so the training steps take about BUDGET_S seconds
# (the last GAN_FRACTION of them adversarial), then run the job. This is how checkpoints/soundstream_small
# was trained (see REPORT.md for the values used):
#
#   videopoet train-tokenizer --config configs/tokenizer/soundstream_small.yaml stage=prepare   # once, with PyAV
#   BUDGET_S=380 RUN=out/soundstream_small bash checkpoints/soundstream_small/train_budget.sh
#
# Extra arguments are passed to both runs as key=value overrides. Needs python3 with torch, numpy, einops,
# safetensors, fsspec, pyyaml, scipy and pystoi, and `videopoet` importable (PYTHONPATH=<repo root>).
set -euo pipefail
export PYTHONUNBUFFERED=1
CONFIG=${CONFIG:-configs/tokenizer/soundstream_small.yaml}
CACHE=${CACHE:-out/audio_cache/soundstream_small}
BUDGET_S=${BUDGET_S:-380}
GAN_FRACTION=${GAN_FRACTION:-0.4}
RUN=${RUN:-out/soundstream_small}
PROBE=${PROBE:-/tmp/soundstream_probe}
PROBE_STEPS=${PROBE_STEPS:-40}
COMMON=(stage=train "soundstream.data.cache=$CACHE" "$@")

python3 jobs/train_tokenizer.py --config "$CONFIG" "${COMMON[@]}" "soundstream.out_dir=$PROBE" \
  soundstream.resume=false "soundstream.steps=$PROBE_STEPS" "soundstream.loss.adversarial_start_step=$((PROBE_STEPS / 2))" \
  soundstream.eval_every=0 soundstream.log_every=10 "soundstream.eval_levels=[1]" soundstream.data.eval_max_seconds=1 \
  soundstream.data.eval_examples=0 soundstream.tensorboard=false

read -r STEPS ADV < <(python3 - "$PROBE/summary.json" "$BUDGET_S" "$GAN_FRACTION" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
budget, gan = float(sys.argv[2]), float(sys.argv[3])
t_rec, t_adv = s["recon_step_s"], s["adversarial_step_s"]
steps = int(budget / ((1 - gan) * t_rec + gan * t_adv))
print(steps, int(round((1 - gan) * steps)))
print(f"probe: {t_rec:.4f} s/step reconstruction-only, {t_adv:.4f} s/step with discriminators -> "
      f"{steps} steps in {budget:.0f} s, discriminators from step {int(round((1 - gan) * steps))}", file=sys.stderr)
EOF
)

python3 jobs/train_tokenizer.py --config "$CONFIG" "${COMMON[@]}" "soundstream.out_dir=$RUN" \
  "soundstream.steps=$STEPS" "soundstream.loss.adversarial_start_step=$ADV" \
  "soundstream.eval_every=$((STEPS / 3 + 1))" "soundstream.ckpt_every=$((STEPS / 2 + 1))" \
  "soundstream.max_time_s=$((${BUDGET_S%.*} + 60))"
