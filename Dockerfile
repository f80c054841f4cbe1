# syntax=docker/dockerfile:1
# patless container image: a glibc build on Debian 12, run on distroless "cc" (glibc, libgcc, CA
# certificates; no shell, no package manager) as the numeric non-root user 65532.
#
#   docker build -t patless:0.1.0 \
#       --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm -p 127.0.0.1:7070:7070 -p 127.0.0.1:7071:7071 \
#       -v "$PWD/patless.toml:/etc/patless/patless.toml:ro" patless:0.1.0
#
# Without a config file the embedded default listens on the container's loopback only. A config
# for a container sets `admin_listen = "0.0.0.0:7071"` (probes, Prometheus) and, for a proxy
# reached from outside the pod or container, `listen = "0.0.0.0:7070"` with `inbound_token`:
# deploy/kubernetes/ has both kinds. /etc/patless/patless.toml is found without --config.
#
# For reproducible builds pin both images by digest, e.g.
#   --build-arg RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:… --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:…

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- build --------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The slim Rust image has gcc and libc6-dev: enough for aws-lc-sys (rustls' crypto), which
# compiles its C with the cc crate (no cmake or clang needed on x86_64/aarch64 Linux). jemalloc
# (the allocator, src/main.rs) builds with configure and make (bookworm's, pinned).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*
ENV CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# 1. Dependencies only, from the manifest and lock file, with stub sources: this layer is reused
#    as long as Cargo.toml and Cargo.lock do not change.
COPY Cargo.toml Cargo.lock ./
# jemalloc's compiled-in settings ([env] JEMALLOC_SYS_WITH_MALLOC_CONF).
COPY .cargo ./.cargo
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin patless \
    && rm -rf src target/release/patless* target/release/deps/patless-* \
        target/release/deps/libpatless-* target/release/.fingerprint/patless-*

# 2. patless itself (config/default.toml is the embedded default, compiled in).
COPY config ./config
COPY src ./src
RUN cargo build --release --locked --bin patless \
    && ./target/release/patless --version

# --- runtime ------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="patless" \
      org.opencontainers.image.description="Reverse proxy that injects Microsoft Entra tokens: call Azure DevOps, Defender, Graph and ARM without a PAT" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot" \
      org.opencontainers.image.documentation="deploy/README.md, section Container image"
COPY --from=build /src/target/release/patless /usr/local/bin/patless
# distroless's "nonroot" user, by number, so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# 7070: the proxy; 7071: the admin listener (/healthz, /readyz, /metrics).
EXPOSE 7070 7071
ENTRYPOINT ["patless"]
CMD ["serve"]
