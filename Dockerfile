# The kms-sidecar image: one static-ish binary for the sidecar (`serve`) and
# the admission webhook (`webhook`), on distroless, as uid 65532 (the chart's
# injection.runAsUser).
#   docker build -t ghcr.io/kms-sidecar/kms-sidecar:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kms-sidecar

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kms-sidecar /usr/local/bin/kms-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kms-sidecar"]
CMD ["serve"]
