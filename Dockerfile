FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev libvirt-clients pkg-config gcc openssh-client \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY orchestrator orchestrator
COPY tasks tasks
COPY workers workers
RUN pip install --no-cache-dir . && useradd --system vmorch
USER vmorch
