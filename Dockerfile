# The wakegate control plane. In a cluster it runs as `wakegate controller` (see
# charts/wakegate); any other subcommand can be given as the container's arguments.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package is built from (the repository's top-level folders map into the
# single `wakegate` import namespace; see pyproject.toml).
COPY pyproject.toml README.md ./
COPY wakegate ./wakegate
COPY ingress ./ingress
COPY serving ./serving
COPY xds ./xds
COPY reconciler ./reconciler
COPY runtime ./runtime
COPY autoscaler ./autoscaler
COPY activator ./activator
COPY protos ./protos
RUN pip install . \
    && rm -rf /src

# The same uid/gid as the chart's securityContext (runAsUser/runAsGroup 65532).
RUN groupadd --system --gid 65532 wakegate \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin wakegate

WORKDIR /
USER 65532:65532
# xDS (gRPC), Prometheus metrics, /healthz + /readyz.
EXPOSE 18000 9090 8086

ENTRYPOINT ["wakegate"]
CMD ["controller"]
