# A DeepLabV3 worker for Ascend NPUs. BASE_IMAGE must provide CANN (matching the hosts' NPU driver) and a
# Python 3.9-3.12 interpreter as `python3`; see README "Images" for bases that fit.
# Build from the repository root:
#   docker build -f images/worker-ascend.Dockerfile --build-arg BASE_IMAGE=<cann image> -t IMAGE .
ARG BASE_IMAGE=quay.io/ascend/cann:8.2.rc1-910b-ubuntu22.04-py3.11

FROM ${BASE_IMAGE} AS build
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY job job
COPY controller controller
COPY envtest envtest
RUN /opt/venv/bin/pip install --no-cache-dir ".[job]"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="deeplab-operator worker (Ascend)" \
      org.opencontainers.image.description="DeepLabV3 MindSpore training job, Ascend backend (CANN)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# Runs as root: the Ascend driver's device nodes (/dev/davinci*) and the HCCL sockets are root-owned on
# stock Atlas hosts. Clusters whose device plugin sets device ownership can run it with runAsUser.
ENTRYPOINT ["python", "-m", "job", "launch", "--"]
CMD ["train", "--help"]
