"""Pure planning: specs in, SageMaker request dicts and names out; no I/O."""
