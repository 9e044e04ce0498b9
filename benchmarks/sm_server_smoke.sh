# The serving container's entry point on a GPU, as an endpoint runs it: a small bf16 Llama with the
# DailyDialog tokenizer from benchmarks/train_job_prepare.py (DIR, default .gpu), sm_server.py on
# port 18080, /ping until ready, a batched, a sampled and a malformed invocation, then SIGTERM.
DIR=$(cd "${1:-.gpu}" && pwd)
export PYTHONUNBUFFERED=1
DIR=$DIR python3 - <<'PY'
import os, torch
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(os.environ["DIR"] + "/tokenizer")
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained("/tmp/serve-model"); tok.save_pretrained("/tmp/serve-model")
PY
t0=$(date +%s)
SM_MODEL_DIR=/tmp/serve-model SAGEMAKER_BIND_TO_PORT=18080 python3 workloads/serve/sm_server.py > /tmp/sm.log 2>&1 &
pid=$!
until curl -sf localhost:18080/ping > /dev/null; do sleep 1; kill -0 $pid 2>/dev/null || break; [ $(( $(date +%s) - t0 )) -gt 240 ] && break; done
echo "ping 200 after $(( $(date +%s) - t0 )) s"
post() { curl -s -w ' HTTP %{http_code}\n' -H 'Content-Type: application/json' -d "$1" localhost:18080/invocations; }
post '{"inputs": ["Hello, how are you?", "Where is the station?"], "parameters": {"max_new_tokens": 12, "details": true}}'
post '{"inputs": "I would like a coffee", "parameters": {"max_new_tokens": 12, "do_sample": true, "temperature": 0.8, "top_p": 0.9}}'
post '{"inputs": "Hi", "parameters": {"top_p": 2}}'
kill -TERM $pid; wait $pid; echo "exit $?"
grep -E "attention|graphs|listening|Error|Traceback" /tmp/sm.log | head -8
