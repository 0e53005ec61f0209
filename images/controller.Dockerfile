# The DeepLabTraining operator: Python + the kubernetes client, nothing else.
# Build from the repository root: docker build -f images/controller.Dockerfile -t IMAGE .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller controller
COPY job job
COPY envtest envtest
RUN /opt/venv/bin/pip install --no-cache-dir ".[controller]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="deeplab-operator controller" \
      org.opencontainers.image.description="Kubernetes operator for DeepLabTraining resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# Distroless-style nonroot uid; the Deployment also sets runAsNonRoot and a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["python", "-m", "controller"]
