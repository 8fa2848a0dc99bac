# twoview: the app and the `twoview` command in one image, CPU torch by default.
#   docker build -t twoview .                                    (CPU, from python:3.11-slim)
#   docker build -t twoview:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run -p 127.0.0.1:8501:8501 twoview                    (the app)
#   docker run -v /data:/data twoview twoview predict /data -o /data/out.csv
# Without access to an image registry, docker/build-local.sh makes a Debian base and builds with it.
ARG BASE=python:3.11-slim

# --- build: a virtual environment with torch, the locked dependencies and twoview -----------------
FROM ${BASE} AS build
# The torch build: the CPU wheels by default; a CUDA index (cu126, cu128, ...) for NVIDIA GPUs.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A CA bundle for pip, for networks that re-sign TLS (path inside the build, e.g. /tmp/docker/ca-bundle.crt).
ARG PIP_CERT=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
SHELL ["/bin/sh", "-eu", "-c"]

# A base without Python (plain Debian) gets Debian's python3; python:3.11-slim already has it.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv

# Dependencies first, so a source change does not reinstall them: torch, then the locked versions.
# docker/wheels/ may hold a torch wheel (docker/build-local.sh puts this machine's there).
COPY docker/ /tmp/docker/
COPY requirements.lock /tmp/requirements.lock
# hadolint ignore=DL3013
RUN pip install ${PIP_CERT:+--cert "$PIP_CERT"} --find-links /tmp/docker/wheels \
        ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"; \
    pip install ${PIP_CERT:+--cert "$PIP_CERT"} -r /tmp/requirements.lock

# twoview itself, with the sample studies and the demo model (when sample_data/models/ has it).
COPY . /tmp/src
# hadolint ignore=DL3013
RUN pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps /tmp/src; \
    twoview --version

# --- the image: the base, a non-root user and the environment, nothing of the build -------------
FROM ${BASE}
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c "import venv" 2>/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --create-home --uid 10001 --shell /usr/sbin/nologin twoview
COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/twoview
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    HOME=/home/twoview \
    MPLCONFIGDIR=/tmp/matplotlib \
    TWOVIEW_APP_DIR=/home/twoview/app \
    TWOVIEW_PORT=8501
EXPOSE 8501

# The app answers on /_stcore/health; a container running another command (predict, train) is not the app.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["sh", "-c", \
    "grep -q streamlit /proc/1/cmdline || exit 0; exec python -c \"import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['TWOVIEW_PORT'] + '/_stcore/health', timeout=4)\""]

# 0.0.0.0 inside the container's own network namespace: reachable only through a published port.
CMD ["sh", "-c", "exec twoview app --host 0.0.0.0 --port \"$TWOVIEW_PORT\""]
