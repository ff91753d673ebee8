# Ferry's image: `docker build -t ferry .` (multi-stage; the result runs as a non-root user).
# The builder compiles the release binary with its default features (Docker runtime,
# Kubernetes runtime and `ferry export --k8s`); the runtime stage holds that binary only.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry --bin ferry \
    && install -m 0755 target/release/ferry /usr/local/bin/ferry

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/ferry ferry \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/ferry
COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry
USER 10001:10001
WORKDIR /var/lib/ferry
# The API (7070); the apps' listeners are set per environment in their manifests.
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["server", "--data", "/var/lib/ferry", "--listen", "0.0.0.0:7070"]
