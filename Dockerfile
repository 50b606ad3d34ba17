# syntax=docker/dockerfile:1
# The strata project image (CPU): the serving app (`strata serve`) and every Kubeflow pipeline
# component (they override the command with KFP's executor). Build from the repository root:
#   docker build -t ghcr.io/strata-recsys/strata:0.1.0 .
# Pin the base by digest in CI (`--build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...`).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# torch first from the CPU-only index (no CUDA wheels), then the package with the pipelines
# extra (kfp: the components' executor) against the full lock.
RUN pip install pip==26.3 setuptools==84.2.1 wheel==0.48.0 \
    && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -c constraints.txt ".[pipelines]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STRATA_HOME=/data \
    STRATA_SERVE__HOST=0.0.0.0
RUN groupadd --system --gid 10001 strata \
    && useradd --system --uid 10001 --gid strata --create-home --home-dir /home/strata strata \
    && mkdir /data \
    && chown strata:strata /data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/strata
# DuckDB fetches its S3 extension (httpfs, for an s3:// offline store) on first use; the pods run
# with a read-only root file system and often without a route to extensions.duckdb.org, so it is
# installed into the user's ~/.duckdb here, at build time.
RUN python -c "import duckdb; duckdb.install_extension('httpfs')"
EXPOSE 8000
CMD ["strata", "serve", "--port", "8000"]
