# The training job itself (workloads/train_entry.py under torchrun, method smp = FSDP fallback) on one
# GPU with torch_compile auto and off, on a 111M-parameter Llama built from a config. Inputs from
# benchmarks/train_job_prepare.py in DIR (default .gpu). Prints the job's own [train] lines.
DIR=$(cd "${1:-.gpu}" && pwd)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/workloads
DIR=$DIR python3 - <<'PY'
import os
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(os.environ["DIR"] + "/tokenizer")
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
m = LlamaForCausalLM(cfg); m.save_pretrained("/tmp/base", safe_serialization=True); tok.save_pretrained("/tmp/base")
print("params", sum(p.numel() for p in m.parameters()) / 1e6, "M")
PY
# RUNS: torch_compile:precision pairs (default: compiled and not, both bf16).
for run in ${RUNS:-auto:bf16 off:bf16}; do
  mode=${run%%:*}; precision=${run##*:}
  t=$([ $mode = off ] && echo 45 || echo 95)
  rm -rf /tmp/job-$mode; mkdir -p /tmp/job-$mode/model /tmp/job-$mode/output
  echo "=== smp (FSDP fallback), torch_compile=$mode, precision=$precision"
  SAGEMAKER_BASE_DIR=/tmp/job-$mode SM_CHANNEL_TRAIN=$DIR/train SM_MODEL_DIR=/tmp/job-$mode/model SM_OUTPUT_DIR=/tmp/job-$mode/output \
  timeout $t torchrun --standalone --nproc_per_node 1 workloads/train_entry.py --method smp --base_model /tmp/base \
    --data_format prepared --max_steps 30 --logging_steps 10 --per_device_batch_size 8 --max_seq_length 1024 \
    --torch_compile $mode --precision $precision --learning_rate 3e-4 2>&1 | grep -E "\[train\]|Error|error|Traceback" | head -20
  cat /tmp/job-$mode/output/failure 2>/dev/null || true
  ls /tmp/job-$mode/model | head -5
done
