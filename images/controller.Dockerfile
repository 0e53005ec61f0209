# The DeepLabTraining operator: Python + the kubernetes client, nothing else.
# Build from the repository root: docker build -f images/controller.Dockerfile -t IMAGE .
# Reproducible builds pin the base by digest (README "Images" says how to look it up):
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# The base must be CPython 3.11: images/requirements-controller.lock is resolved for it (`make lock`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
WORKDIR /src
# Every third-party file is checked against the lock's hashes (setuptools, the build backend, too); then
# the project itself is built offline with that setuptools. `pip check` fails a lock missing a dependency.
COPY images/requirements-controller.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml ./
# Only the package this image runs: no job/ (MindSpore), no envtest/.
COPY controller controller
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="deeplab-operator controller" \
      org.opencontainers.image.description="Kubernetes operator for DeepLabTraining resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# Distroless-style nonroot uid; the Deployment also sets runAsNonRoot and a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["python", "-m", "controller"]
