# tradingd in a container: see README.md, "Running as a service" (Docker).
#   docker build -t tradingd .
#   docker compose up -d          (docker-compose.yml: config and keys mounted, state in a volume)
# No secret is ever part of the image: keys come at run time from the environment or a mounted
# owner-only key file (secrets.key_file).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a self-contained virtualenv under /opt/tradingd/venv ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/tradingd/venv
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY adapters ./adapters
COPY risk ./risk
RUN /opt/tradingd/venv/bin/pip install --no-cache-dir .
# the default config: the shipped example, with its state in the volume
COPY config.toml ./config.toml
RUN sed 's|^state_dir = .*|state_dir = "/var/lib/tradingd"|' config.toml > tradingd.toml \
    && grep -q '^state_dir = "/var/lib/tradingd"$' tradingd.toml

# -- run: the same slim base, the venv, an unprivileged user -----------------------------------
FROM ${PYTHON_IMAGE}
# ARCH_DISABLE_NUMBA: riskfolio-lib imports arch, which would pull in numba's JIT; the daemon
# needs neither, and without it no writable-executable memory is needed
ENV PATH=/opt/tradingd/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARCH_DISABLE_NUMBA=1
RUN groupadd --system --gid 10001 tradingd \
    && useradd --system --uid 10001 --gid tradingd --home-dir /var/lib/tradingd \
       --shell /usr/sbin/nologin tradingd \
    && install -d -o tradingd -g tradingd -m 0700 /var/lib/tradingd
COPY --from=build /opt/tradingd/venv /opt/tradingd/venv
COPY --from=build /src/tradingd.toml /etc/tradingd/config.toml
# numeric, so a runtime can tell it is not root (e.g. Kubernetes runAsNonRoot)
USER 10001:10001
WORKDIR /var/lib/tradingd
# journal.sqlite and control.sock: keep the journal across container replacements
VOLUME ["/var/lib/tradingd"]
# asks the daemon itself over its control socket: healthy = started, loop responsive, bars fresh,
# bus delivering
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["tradingd", "health", "--config", "/etc/tradingd/config.toml", "--timeout", "8"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tradingd"]
CMD ["run", "--config", "/etc/tradingd/config.toml"]
