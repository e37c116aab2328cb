# syntax=docker/dockerfile:1
# embserve: one process per pod serving HTTP (8000) and gRPC (8001).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# numba's OpenMP threading layer needs libgomp at build (warm-up) and at run time
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY service ./service
# the README's install step, unchanged (tests/test_deploy.py checks they stay identical)
RUN pip install .
# compile every kernel for fixed targets, not the build host: x86-64-v3 (AVX2, the 4-bit fast
# scan's shuffles) and, when the build host has AVX-512 (VBMI, VNNI, VPOPCNTDQ), AVX-512 server
# cores; one cache each under /opt/numba-cache, and a container takes the best its CPU runs
RUN python -m runtime.warm --levels /opt/numba-cache

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin embserve
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/numba-cache /opt/numba-cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMBSERVE_NUMBA_CACHES=/opt/numba-cache \
    EMBSERVE_HOST=0.0.0.0 \
    EMBSERVE_DEMO_DIR=/tmp/embserve-demo
USER 10001
WORKDIR /home/embserve
EXPOSE 8000 8001
# liveness for `docker run` (Kubernetes uses the manifests' probes instead); long start period: a
# first start without the built cache's CPU level compiles kernels for minutes
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EMBSERVE_HTTP_PORT', '8000'), timeout=3)"
ENTRYPOINT ["embserve"]
CMD ["serve"]
