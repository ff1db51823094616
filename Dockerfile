# syntax=docker/dockerfile:1
# The keyrotor operator image: `docker build -t keyrotor:0.1.0 .`
# Runs `keyrotor run` as an unprivileged user; deploy/base sets the same uid and a read-only
# root filesystem.
#
# Reproducible inputs: the base image is pinned by digest (python:3.11-slim; move it with
# `docker buildx imagetools inspect python:3.11-slim`), and every Python package, the build
# backend included, comes from requirements.lock with its hashes (`make lock` regenerates it
# from pyproject.toml with pip-compile --generate-hashes). Nothing is installed unpinned.
# checkov:skip=CKV_DOCKER_2:Kubernetes probes /healthz (deploy/base, the Helm chart); a Docker HEALTHCHECK would need curl in the image
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
WORKDIR /src
COPY requirements.lock ./
# Every dependency as a wheel, checked against the lock's hashes; then keyrotor's own wheel,
# built offline with the locked setuptools (no build isolation, so nothing unpinned is fetched).
RUN pip download --no-cache-dir --disable-pip-version-check --require-hashes --only-binary=:all: \
      --dest /wheels -r requirements.lock \
 && pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
      --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-index --no-deps \
      --no-build-isolation --wheel-dir /dist .

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
LABEL org.opencontainers.image.title="keyrotor" \
      org.opencontainers.image.description="Kubernetes operator that rotates AWS IAM access keys through Secrets Manager" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/dist,target=/dist \
    --mount=type=bind,from=build,source=/src/requirements.lock,target=/requirements.lock \
    pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
      --require-hashes -r /requirements.lock \
 && pip install --no-cache-dir --disable-pip-version-check --no-index --no-deps /dist/*.whl \
 && groupadd --system --gid 10001 keyrotor \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin keyrotor
USER 10001:10001
# metrics, health (KEYROTOR_METRICS_PORT / KEYROTOR_HEALTH_PORT, on KEYROTOR_BIND_ADDRESS)
EXPOSE 8080 8081
ENTRYPOINT ["keyrotor"]
CMD ["run"]
