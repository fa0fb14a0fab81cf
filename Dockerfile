# Multi-stage build of the `conduit` binary; the runtime image runs as a non-root user.
# Relay: docker run --read-only -p 7471:7471/udp -v /etc/conduit/relay:/certs:ro IMAGE \
#          relay --listen 0.0.0.0:7471 --cert /certs/relay.pem --key /certs/relay.key
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/conduit

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /home/conduit --create-home conduit
COPY --from=build /src/target/release/conduit /usr/local/bin/conduit
USER conduit
ENV CONDUIT_HOME=/home/conduit/.conduit
EXPOSE 7471/udp
ENTRYPOINT ["/usr/local/bin/conduit"]
CMD ["--help"]
