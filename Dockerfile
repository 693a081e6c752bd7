# syntax=docker/dockerfile:1
# One image for both Strait binaries: the manifests in deploy/ run `strait-control` (Deployment) and
# `strait-proxy` (DaemonSet). Build: docker build -t strait:latest .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Two cargo invocations on purpose: features unify within one build, and the proxy must link strait-api
# without its `kube` feature (the control plane's).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p strait-proxy --bin strait-proxy \
 && cargo build --release --locked -p strait-control --bin strait-control \
 && install -D -m 0755 -t /out target/release/strait-proxy target/release/strait-control

FROM debian:bookworm-slim
# nftables: the proxy's capture rules (`nft -f -`); iproute2: policy routing for TPROXY.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# Non-root by default (the control plane); the DaemonSet runs the proxy as root with NET_ADMIN and NET_RAW only.
USER 65532:65532
EXPOSE 15012 15001 15006 15008 15020
CMD ["strait-control", "--help"]
