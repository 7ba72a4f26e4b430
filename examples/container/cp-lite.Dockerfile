# cp-lite and kumactl in one image, for the compose example.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cp-lite --bins

FROM debian:bookworm-slim
RUN useradd --system --uid 5681 --home-dir /var/lib/cp-lite --shell /usr/sbin/nologin cp-lite \
 && mkdir -p /var/lib/cp-lite && chown cp-lite /var/lib/cp-lite
COPY --from=build /src/target/release/cp-lite /src/target/release/kumactl /usr/local/bin/
USER cp-lite
ENTRYPOINT ["/usr/local/bin/cp-lite", "run"]
