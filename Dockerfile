# The scheduler image: build-scheduler, run as an unprivileged user.
#
#   scripts/make-debian-base-image          # the base, made locally, no pull
#   docker build -t build-scheduler -f Dockerfile .
#
# Behind a TLS-intercepting proxy, give pip its CA:
#   --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
# (used in the builder stage only; it does not reach the final image).
#
# The builder stage is the same, byte for byte, in Dockerfile.worker, so the
# second image reuses the first one's layers (tests/test_images.py checks
# that the two stay identical). Only the legacy builder's syntax is used: no
# heredocs, no RUN --mount.
#
# Pinned: the base is Debian bookworm (its packages are whatever bookworm
# and bookworm-security carry on the day of the build); pip, the build
# tools and every runtime dependency of the package are pinned in
# requirements.lock and build-requirements.lock. `pip check` fails the build if
# pyproject.toml gains a dependency that has no pin here yet. pip and
# setuptools are removed from the final virtual environment.

ARG BASE_IMAGE=localhost/debian:bookworm

FROM ${BASE_IMAGE} AS builder
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates; \
    rm -rf /var/lib/apt/lists/*
ARG EXTRA_CA_CERTS=
RUN set -eu; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" >/usr/local/share/ca-certificates/build-extra.crt; \
        update-ca-certificates; \
    fi
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Dependencies first, from this file alone, so that changing the source does
# not reinstall them. Wheels only: no compiler is needed or present.
COPY requirements.lock build-requirements.lock /src/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install pip==26.3; \
    /opt/venv/bin/pip install --only-binary=:all: -r /src/requirements.lock; \
    python3 -m venv /opt/build-tools; \
    /opt/build-tools/bin/pip install pip==26.3; \
    /opt/build-tools/bin/pip install --only-binary=:all: -r /src/build-requirements.lock
COPY pyproject.toml README.md /src/
COPY schema /src/schema
COPY src /src/src
RUN set -eux; \
    /opt/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src; \
    /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/pip uninstall --yes pip setuptools; \
    rm -rf /tmp/wheels; \
    /opt/venv/bin/build-scheduler --version; \
    /opt/venv/bin/build-worker --version

FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 10001 build-scheduler; \
    useradd --uid 10001 --gid 10001 --home-dir /var/lib/build-scheduler \
        --no-create-home --no-log-init --shell /usr/sbin/nologin build-scheduler; \
    install -d -o 10001 -g 10001 -m 0700 /var/lib/build-scheduler /etc/build-scheduler/secrets
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/build-scheduler
# The key (key.pem) and the .cap files; the logs of the running jobs.
VOLUME ["/etc/build-scheduler/secrets", "/var/lib/build-scheduler"]
# Cap'n Proto RPC over TLS; Prometheus metrics over plain HTTP (no
# authentication: publish it only where your Prometheus alone can reach it).
EXPOSE 9000 9090
ENTRYPOINT ["build-scheduler"]
# Arguments given to `docker run` replace all of these; add at least
# --capnp-public-address=tcp:HOST:PORT, the address the .cap files name.
CMD ["--capnp-secret-key-file=/etc/build-scheduler/secrets/key.pem", \
     "--capnp-listen-address=tcp:0.0.0.0:9000", \
     "--state-dir=/var/lib/build-scheduler", \
     "--pools=linux", \
     "--listen-prometheus=0.0.0.0:9090"]
