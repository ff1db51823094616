# syntax=docker/dockerfile:1
# The keyrotor operator image: `docker build -t keyrotor:0.1.0 .`
# Runs `keyrotor run` as an unprivileged user; deploy/base sets the same uid and a read-only
# root filesystem.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Wheels for keyrotor and all its dependencies, so the final stage installs offline.
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="keyrotor" \
      org.opencontainers.image.description="Kubernetes operator that rotates AWS IAM access keys through Secrets Manager" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index /wheels/*.whl \
 && groupadd --system --gid 10001 keyrotor \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin keyrotor
USER 10001:10001
# metrics, health (set with KEYROTOR_METRICS_PORT / KEYROTOR_HEALTH_PORT)
EXPOSE 8080 8081
ENTRYPOINT ["keyrotor"]
CMD ["run"]
