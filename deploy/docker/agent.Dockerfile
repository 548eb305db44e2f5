# syntax=docker/dockerfile:1
# The GPU host agent (pixelfleet agent): supervises the streamer slots of one host, reports
# them to the matchmaker, serves /metrics, /livez, /readyz and /healthz on 9102.
#   docker build -f deploy/docker/agent.Dockerfile -t pixelfleet/agent .
#   docker run --runtime nvidia --gpus all --network host \
#     -e PIXELFLEET_AGENT_TOKEN=... -e PIXELFLEET_AGENT__MATCHMAKER_URL=http://mm:9999 pixelfleet/agent
#
# NVIDIA container runtime: the host needs the NVIDIA driver and nvidia-container-toolkit
# (Docker: --runtime nvidia --gpus all; Kubernetes: the device plugin and a RuntimeClass,
# docs/deploy.md). The runtime mounts the driver's user-space libraries into the container
# for the capabilities below: utility = NVML (libnvidia-ml, the agent's GPU/NVENC telemetry),
# video = NVENC/NVDEC (UE's encoder), compute = CUDA, graphics = Vulkan/OpenGL (UE renders).
# Nothing from the driver is baked in, so one image serves every driver version. Without
# the runtime the agent still starts and reports no GPU ("NVML unavailable").
#
# EXTRAS: agent (NVML bindings, psutil, boto3 for CloudWatch) plus streamer (aiortc, av,
# numpy) for the synthetic test-pattern streamer, the default PIXELFLEET_AGENT__STREAMER.
# A UE-only fleet can build with --build-arg EXTRAS=agent and add its packaged build in
# an image FROM this one (PIXELFLEET_AGENT__STREAMER=ue, PIXELFLEET_AGENT__UE_BINARY=...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS="agent,streamer"
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
RUN /opt/pixelfleet/bin/pip install "/src[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pixelfleet
COPY --from=build /opt/pixelfleet /opt/pixelfleet
COPY deploy/docker/healthcheck.py /opt/pixelfleet/healthcheck.py
ENV PATH=/opt/pixelfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video,graphics \
    PIXELFLEET_LOG_FORMAT=json \
    PIXELFLEET_AGENT__METRICS_HOST=0.0.0.0 \
    PIXELFLEET_AGENT__METRICS_PORT=9102
USER 10001
EXPOSE 9102
# healthcheck.py asks /readyz on the metrics port: 503 while the agent is not registered with its
# matchmaker or the last heartbeat failed (an agent without a matchmaker is always ready)
HEALTHCHECK --interval=15s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python", "/opt/pixelfleet/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pixelfleet"]
CMD ["agent"]
