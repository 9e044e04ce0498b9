"""The boto3 layer: clients from standard configuration, the SageMaker gateway, SQS event intake."""
