# syntax=docker/dockerfile:1
# Build: docker build -t patless .
# Run:   docker run --rm -p 127.0.0.1:7070:7070 -e AZURE_CLIENT_ID -e AZURE_TENANT_ID -e AZURE_CLIENT_SECRET patless
#        (inside a container, set PATLESS_SERVER__LISTEN=0.0.0.0:7070 together with an inbound policy
#        once issue "Hardened by default" lands; until then publish the port on loopback only.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/patless* target/release/.fingerprint/patless*
COPY config ./config
COPY src ./src
RUN cargo build --release --locked && strip target/release/patless

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="patless" \
      org.opencontainers.image.description="Reverse proxy that injects Microsoft Entra tokens: call Azure DevOps, Defender, Graph and ARM without a PAT" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /src/target/release/patless /usr/local/bin/patless
USER 65532:65532
EXPOSE 7070 7071
ENTRYPOINT ["patless"]
CMD ["serve"]
