# syntax=docker/dockerfile:1
# embserve: one process per pod serving HTTP (8000) and gRPC (8001).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CPU_NAME=x86-64-v3 \
    NUMBA_CPU_FEATURES="+64bit,+cmov,+cx8,+cx16,+fxsr,+mmx,+sahf,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave" \
    NUMBA_CACHE_DIR=/opt/numba-cache
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
# the README's install step, unchanged (tests/test_container.py checks they stay identical)
RUN pip install .
# compile every kernel for x86-64-v3 (AVX2, the 4-bit fast scan's shuffles; not the build host's
# own extensions) into the cache the final stage ships
RUN python -m runtime.warm

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin embserve
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/numba-cache /opt/numba-cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CPU_NAME=x86-64-v3 \
    NUMBA_CPU_FEATURES="+64bit,+cmov,+cx8,+cx16,+fxsr,+mmx,+sahf,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave" \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    EMBSERVE_HOST=0.0.0.0 \
    EMBSERVE_DEMO_DIR=/tmp/embserve-demo
USER 10001
WORKDIR /home/embserve
EXPOSE 8000 8001
ENTRYPOINT ["embserve"]
CMD ["serve"]
