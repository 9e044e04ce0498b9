# The operator's image: the operator and the workloads it uploads as training source, no ML stack
# (that runs inside SageMaker's own images).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY workloads /opt/llama-operator/workloads
COPY crds /opt/llama-operator/crds
ENV LLAMA_OPERATOR_WORKLOADS_DIR=/opt/llama-operator/workloads \
    LLAMA_OPERATOR_CRDS_DIR=/opt/llama-operator/crds \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["llama-operator"]
CMD ["run", "--all-namespaces"]
