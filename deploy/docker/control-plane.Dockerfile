# syntax=docker/dockerfile:1
# The control plane: signalling and the matchmaker, one image, the command picks the service.
#   docker build -f deploy/docker/control-plane.Dockerfile -t pixelfleet/control-plane .
#   docker run -p 8080:8080 -p 8888:8888 pixelfleet/control-plane                 # signalling
#   docker run -p 9999:9999 -e PIXELFLEET_SESSION_TOKEN_SECRET=... pixelfleet/control-plane matchmaker
# Only the core dependencies: no aiortc, av, numpy, NVML bindings or boto3 (docs/deploy.md, "Images").
# EXTRAS=aws adds boto3 for the Kinesis Video Streams TURN provider.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pixelfleet
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pixelfleet pixelfleet
COPY signaling signaling
COPY matchmaker matchmaker
COPY turn turn
COPY gpu_agent gpu_agent
COPY streamer streamer
COPY loadtest loadtest
COPY autoscale autoscale
RUN /opt/pixelfleet/bin/pip install "/src${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
# 10001: a fixed non-root uid, so Kubernetes' runAsNonRoot and ECS's user setting can check it
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pixelfleet
COPY --from=build /opt/pixelfleet /opt/pixelfleet
COPY deploy/docker/healthcheck.py /opt/pixelfleet/healthcheck.py
ENV PATH=/opt/pixelfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIXELFLEET_LOG_FORMAT=json \
    PIXELFLEET_HOST=0.0.0.0 \
    PIXELFLEET_PLAYER_PORT=8080 \
    PIXELFLEET_STREAMER_PORT=8888 \
    PIXELFLEET_SFU_PORT=-1 \
    PIXELFLEET_MATCHMAKER__HOST=0.0.0.0 \
    PIXELFLEET_MATCHMAKER__PORT=9999
USER 10001
EXPOSE 8080 8888 9999
# healthcheck.py asks the running command's /readyz: signalling on the player port (503 while
# draining or cut off from Redis), the matchmaker on its port (503 while draining or its store fails)
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
    CMD ["python", "/opt/pixelfleet/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pixelfleet"]
CMD ["signaling"]
