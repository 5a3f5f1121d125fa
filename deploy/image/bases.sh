#!/usr/bin/env bash
#! Builds local stand-ins for the two public base images `deploy/Dockerfile` starts from,
#! `debian:bookworm-slim` and `rust:1.95-bookworm`, for a build machine that reaches Debian's
#! archive and the Rust release server but no container registry (this project's build
#! machines). With a registry in reach, skip this: `podman build`/`docker build` pull the real
#! ones.
#!
#! The stand-ins are made the way the official images are: Debian's minbase variant
#! (`mmdebstrap`) for the slim one; for the Rust one, that plus the C toolchain, git and curl
#! of `buildpack-deps` and rustup's minimal profile at the pinned toolchain, with the same
#! RUSTUP_HOME / CARGO_HOME / PATH as the official image, so the Dockerfile runs unchanged.
#! They are tagged under docker.io/library/, which is where the Dockerfile's short names
#! resolve, so a build uses them instead of pulling. Needs root, podman and mmdebstrap
#! (`apt-get install -y podman mmdebstrap`); takes a few minutes (downloads ~150 MB).
set -euo pipefail
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}

SLIM=docker.io/library/debian:bookworm-slim
RUST=docker.io/library/rust:1.95-bookworm
# The toolchain the repository pins (rust-toolchain.toml), with the components it names, so
# cargo in the image does not try to download them at build time.
RUST_VERSION=1.95.0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! podman image exists "$SLIM"; then
    echo "bases: $SLIM from $MIRROR (mmdebstrap, minbase)" >&2
    # Without manual pages, documentation and translations, as the official slim image.
    mmdebstrap --quiet --variant=minbase --format=tar \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        bookworm - "$MIRROR" |
        podman import --change 'CMD ["bash"]' - "$SLIM" >/dev/null
fi

if ! podman image exists "$RUST"; then
    echo "bases: $RUST (C toolchain + rustup $RUST_VERSION)" >&2
    context=$(mktemp -d)
    trap 'rm -rf "$context"' EXIT
    # The build machine's own extra certificate authorities (a TLS-inspecting egress proxy,
    # say) go into the build stages' trust store, or crates.io and the Rust release server
    # fail verification there as they would not on the host. Only this stand-in gets them:
    # the final image starts from the slim one.
    mkdir -p "$context/ca"
    cp /usr/local/share/ca-certificates/*.crt "$context/ca/" 2>/dev/null || true
    cat >"$context/Containerfile" <<CONTAINERFILE
FROM $SLIM
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:\$PATH
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates curl git gcc g++ libc6-dev make pkg-config \\
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
RUN curl --proto '=https' --tlsv1.2 -sSf -o /tmp/rustup-init \\
      https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init \\
 && chmod +x /tmp/rustup-init \\
 && /tmp/rustup-init -y --no-modify-path --profile minimal \\
      --default-toolchain $RUST_VERSION --component rustfmt --component clippy \\
 && rm /tmp/rustup-init && chmod -R a+w \$RUSTUP_HOME \$CARGO_HOME && rustc --version
CONTAINERFILE
    podman build --network host --tag "$RUST" "$context"
fi
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'debian:bookworm-slim|rust:1.95' >&2
