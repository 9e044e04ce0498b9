"""Modules the local SageMaker service puts inside an image's environment (they import nothing of
llama_operator): the framework module a training job's toolkit hands over to, and the LMI front end
that serves an endpoint's model.py."""
