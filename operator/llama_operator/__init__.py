"""llama-operator: LlamaFinetune and LlamaEndpoint resources reconciled into Amazon SageMaker."""

__version__ = "0.1.0"

