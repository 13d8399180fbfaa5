# syntax=docker/dockerfile:1
# Portico: one static-enough binary, `portico <subcommand>` picks the service.
#   docker build -t portico:0.1.0 .
#   docker run --rm -p 3000:3000 portico:0.1.0 serve        # the whole suite, embedded defaults

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY shared shared
COPY services services
COPY edge edge
COPY migrations migrations
COPY bench bench
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portico \
 && cp target/release/portico /portico

# distroless/cc: glibc and libgcc only, no shell, uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portico /usr/local/bin/portico
# Writable only where Kubernetes mounts an emptyDir (the dev JWT key, SQLite when used).
WORKDIR /var/lib/portico
USER 65532:65532
EXPOSE 3000 50051 50052 50053 50054
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["serve"]
