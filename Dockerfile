# syntax=docker/dockerfile:1
#
# pgsat container image.
#
#   docker build -t pgsat .
#   docker run --rm -e DATABASE_URL=... -e AUTH_JWT_ALG=HS256 -e AUTH_JWT_KEY=... \
#              -p 5133:5133 -p 5134:5134 -p 5135:5135 pgsat
#
# Stage 1 builds a release binary; the dependency graph is compiled in its own
# layer (from Cargo.toml/Cargo.lock and stub sources) so editing src/ does not
# rebuild every crate. Stage 2 is debian:bookworm-slim with ca-certificates
# only (TLS to a JWKS endpoint), the binary, and a non-root user.

############################ build ############################
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies only: the manifest, the lock file, build.rs and the .proto it
# compiles, with empty stand-ins for every target Cargo.toml declares.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > benches/replication_throughput.rs \
 && echo 'fn main() {}' > benches/snapshot.rs \
 && echo 'fn main() {}' > benches/filter_fanout.rs \
 && echo 'fn main() {}' > benches/latency.rs \
 && echo 'fn main() {}' > benches/fanout.rs \
 && echo 'fn main() {}' > benches/idle.rs \
 && echo 'fn main() {}' > benches/filtered_fanout.rs \
 && cargo build --release --locked \
 && rm -rf src benches \
           target/release/pgsat target/release/deps/pgsat-* \
           target/release/deps/libpgsat-* target/release/.fingerprint/pgsat-*

# The real sources (sql/ is embedded into the binary by `pgsat dev`).
COPY src ./src
COPY sql ./sql
COPY benches ./benches
RUN cargo build --release --locked --bin pgsat \
 && install -D -m 0755 target/release/pgsat /out/pgsat

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pgsat \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /var/lib/pgsat --shell /usr/sbin/nologin pgsat \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/pgsat

COPY --from=build /out/pgsat /usr/local/bin/pgsat
# /readyz probe with bash's /dev/tcp: no curl or wget in the image.
COPY deploy/docker/healthcheck.sh /usr/local/bin/pgsat-healthcheck

ENV DATA_DIR=/var/lib/pgsat \
    LISTEN_ADDR=0.0.0.0:5133 \
    WS_LISTEN_ADDR=0.0.0.0:5134 \
    HTTP_LISTEN_ADDR=0.0.0.0:5135
VOLUME ["/var/lib/pgsat"]
WORKDIR /var/lib/pgsat
USER 10001:10001

# 5133 protocol (TCP), 5134 WebSocket (/ws), 5135 /metrics /healthz /readyz
EXPOSE 5133 5134 5135

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/pgsat-healthcheck"]

# pgsat drains sessions on SIGTERM and exits 0 within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgsat"]
CMD ["serve"]
