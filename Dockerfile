# One image for every vmorch process (compose.yaml runs it as api, worker, router, agent).
FROM python:3.11-slim-bookworm
# libvirt-dev, pkg-config and gcc build libvirt-python; openssh-client reaches hypervisors
# at qemu+ssh:// URIs; qemu-utils converts imported disk images and assemblies (workers)
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev libvirt-clients pkg-config gcc \
    openssh-client qemu-utils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY orchestrator orchestrator
COPY tasks tasks
COPY workers workers
# A fixed uid, so that the ssh key mounted at /home/vmorch/.ssh can be given to it; the
# upload directory exists here so that a volume mounted on it is the vmorch user's.
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --create-home --home-dir /home/vmorch vmorch \
 && install -d -o vmorch -g vmorch -m 0700 /home/vmorch/.ssh /var/lib/vmorch/uploads
ENV VMORCH_UPLOAD_DIR=/var/lib/vmorch/uploads
USER vmorch
EXPOSE 8080
CMD ["vmorch", "api"]
