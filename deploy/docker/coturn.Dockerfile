# syntax=docker/dockerfile:1
# coturn configured for pixelfleet's TURN REST credentials (deploy/coturn/README.md): the
# template there is rendered at start from the environment by coturn-entrypoint.sh.
#   docker build -f deploy/docker/coturn.Dockerfile -t pixelfleet/coturn .
#   docker run --network host -e TURN_SECRET=... -e PRIVATE_IP=... -e PUBLIC_IP=... \
#     -e UE_PEER_RANGE=10.0.0.0/16 pixelfleet/coturn
# Host networking: the relay range is thousands of UDP ports, and the addresses coturn
# announces must be the host's own.
FROM debian:12.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends coturn=4.6.1-1 gettext-base=0.21-12 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pixelfleet
COPY deploy/coturn/turnserver.conf.template /etc/coturn/turnserver.conf.template
COPY deploy/docker/coturn-entrypoint.sh /usr/local/bin/coturn-entrypoint
# the config is rendered under /tmp (mode 0600), logs go to stdout, the pid file to /tmp
USER 10001
EXPOSE 3478/udp 3478/tcp 5349/tcp
# coturn has no HTTP endpoint: a STUN binding request to the listener is its health check
HEALTHCHECK --interval=15s --timeout=4s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "turnutils_stunclient -p \"${LISTEN_PORT:-3478}\" \"${PRIVATE_IP:-127.0.0.1}\" | grep -q 'UDP reflexive addr'"]
ENTRYPOINT ["/usr/local/bin/coturn-entrypoint"]
