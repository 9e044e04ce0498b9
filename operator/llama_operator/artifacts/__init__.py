"""What the operator puts in S3 for SageMaker to read: the training source tarball
(`training_source`) and the endpoint's LMI code prefix (`endpoint_code`), both stored under keys
named by their content (`upload`), so re-applies and restarts upload nothing new; and the one
reader of s3:// URIs (`s3uri`)."""
