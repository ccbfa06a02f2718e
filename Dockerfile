# registry-gate container image: built with the Rust toolchain, run from distroless as a
# non-root user. Docker (20.10+) lets unprivileged processes bind port 443 in a container.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && mkdir -p /out/certs

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/registry-gate /usr/local/bin/registry-gate
COPY --from=build --chown=65532:65532 /out/certs /etc/registry-gate/certs
WORKDIR /etc/registry-gate
EXPOSE 443
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s \
    CMD ["/usr/local/bin/registry-gate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/registry-gate"]
CMD ["run"]
