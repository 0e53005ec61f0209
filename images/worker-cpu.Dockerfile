# A DeepLabV3 worker with MindSpore's CPU backend: clusters without NPUs, and trying the operator anywhere.
# Build from the repository root: docker build -f images/worker-cpu.Dockerfile -t IMAGE .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY job job
COPY controller controller
COPY envtest envtest
RUN /opt/venv/bin/pip install --no-cache-dir ".[job]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="deeplab-operator worker (CPU)" \
      org.opencontainers.image.description="DeepLabV3 MindSpore training job, CPU backend" \
      org.opencontainers.image.licenses="Apache-2.0"
# MindSpore's CPU kernels link OpenMP at run time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --uid 1000 --create-home worker
USER 1000:1000
WORKDIR /home/worker
ENTRYPOINT ["python", "-m", "job", "launch", "--"]
CMD ["train", "--help"]
