"""Llama fine-tuning inside a SageMaker training job (DeepSpeed ZeRO or SMP v2 / FSDP)."""
