# A DeepLabV3 worker for Ascend NPUs. BASE_IMAGE must provide CANN (matching the hosts' NPU driver) and
# CPython 3.11 as `python3` (images/requirements-worker.lock is resolved for 3.11, on x86_64 and aarch64
# alike); see README "Images" for bases that fit. Build from the repository root, base pinned by digest:
#   docker build -f images/worker-ascend.Dockerfile -t IMAGE . \
#       --build-arg BASE_IMAGE=<cann-image>@sha256:<digest>
ARG BASE_IMAGE=quay.io/ascend/cann:8.2.rc1-910b-ubuntu22.04-py3.11

FROM ${BASE_IMAGE} AS build
RUN python3 -m venv /opt/venv
WORKDIR /src
# Every third-party file (MindSpore included) is checked against the lock's hashes; then the project
# itself is built offline with the locked setuptools. `pip check` fails a lock missing a dependency.
COPY images/requirements-worker.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml ./
# Only the package this image runs: no controller/, no envtest/.
COPY job job
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && /opt/venv/bin/pip check

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
