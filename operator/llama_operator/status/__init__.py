"""Status of both kinds from what SageMaker says (pure: no I/O).

- `values`: how SageMaker spells enum values and times (API and event forms), and how status keeps them;
- `conditions`: Kubernetes-style conditions, set one at a time, and the full set for a phase;
- `finetune`: a LlamaFinetune's status from its training job;
- `endpoint`: a LlamaEndpoint's status from its endpoint;
- `refusal`: a LlamaEndpoint spec refused before anything was sent (role allowlist, invalid spec).
"""
