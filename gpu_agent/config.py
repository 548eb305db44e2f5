"""The agent's settings: ``PIXELFLEET_AGENT__*``, loaded by ``pixelfleet.settings.load_settings``.
The agent and admin tokens and the log settings are shared (``SharedSettings``)."""

from __future__ import annotations

import socket

from pixelfleet.shared_settings import ConfigError, SharedSettings

STREAMER_KINDS = ("synthetic", "ue")
DRAIN_MODES = ("wait", "end")


class AgentSettings(SharedSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Who this host is (HostRegistration).
    host_id: str = ""  # "" = this machine's hostname
    region: str = "local"
    az: str = ""
    gpu_model: str = ""  # "" = the first GPU's NVML name ("none" without a GPU)
    tenant: str = "default"
    app: str = "default"
    # The matchmaker's agent API.
    matchmaker_url: str = "http://127.0.0.1:9999"
    # (agent_token, shared: the matchmaker's agent API; admin_token, optional: marks the
    # host draining before the next heartbeat does)
    heartbeat_period_s: float = 2.0  # the matchmaker declares a host dead after heartbeat_ttl_s (10 s)
    full_heartbeat_every: int = 30  # a full heartbeat at least every this many; deltas between
    request_timeout_s: float = 5.0
    retry_max_s: float = 10.0  # longest wait between tries while the matchmaker is down
    # Signalling: where players go, where streamers connect, and its REST API (readiness).
    signaling_url: str = "ws://127.0.0.1:80"
    streamer_url: str = "ws://127.0.0.1:8888"
    signaling_api_url: str = "http://127.0.0.1:80"  # GET /api/streamers/{id} -> {"streaming": true}
    # Slots: one streamer process each.
    streamer: str = "synthetic"  # synthetic | ue
    slots: int = 0  # 0 = slots_per_gpu per GPU (1 on a host without GPU)
    slots_per_gpu: int = 1
    gpu_slots: list[int] = []  # slots on GPU 0, 1, ... (overrides slots_per_gpu)
    streamer_id: str = "{host}-{index}"  # template; {index} from 0, {n} from 1
    command: list[str] = []  # template; [] = the default command of `streamer`
    extra_args: list[str] = []  # appended to the command
    env: dict[str, str] = {}  # added to each slot's environment
    ue_binary: str = ""  # UE: the packaged build's launcher (e.g. /opt/game/Game.sh)
    codec: str = "H264"  # UE: -PixelStreamingEncoderCodec= (H264 | AV1 | VP8 | VP9)
    res_x: int = 1920
    res_y: int = 1080
    fps: int = 60
    reset_command: list[str] = []  # template; [] = reset by restarting the streamer
    reset_timeout_s: float = 30.0
    startup_timeout_s: float = 120.0  # started but not streaming by then: killed, restarted
    ready_poll_s: float = 0.25  # readiness polls while a slot starts
    health_poll_s: float = 2.0  # checks of a READY slot
    release_timeout_s: float = 5.0  # wait for signalling to drop a dead streamer's id
    stop_timeout_s: float = 10.0  # SIGTERM, then SIGKILL to the slot's process group
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # An idle streamer whose launch credential has this long or less left is restarted with
    # the newest (gpu_agent/credentials.py); the matchmaker's are 900 s, renewed at half life.
    credential_renew_margin_s: float = 60.0
    # At most this many slots of the host renew at once (each from draining to READY again),
    # oldest credential first; renewals start early enough for all to finish by the margin.
    credential_renew_concurrency: int = 1
    # Telemetry.
    sample_period_s: float = 1.0
    # Exposition.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9102  # -1 = off, 0 = any free port
    cloudwatch_namespace: str = ""  # "" = off
    cloudwatch_region: str = ""
    cloudwatch_period_s: float = 60.0
    # Draining.
    drain_mode: str = "wait"  # wait: sessions end on their own; end: end them now
    drain_timeout_s: float = 600.0  # SIGTERM: sessions still running then are ended
    spot: bool = False  # poll EC2 instance metadata for a Spot interruption
    imds_url: str = "http://169.254.169.254"
    spot_poll_s: float = 5.0
    spot_margin_s: float = 15.0  # end sessions this long before the interruption
    # Kubernetes: karpenter.sh/do-not-disrupt on the agent's own pod while a slot holds a
    # session (gpu_agent/k8s_disruption.py). auto: on with the in-cluster service account.
    k8s_do_not_disrupt: str = "auto"  # auto | on | off
    k8s_pod_name: str = ""  # the downward API's metadata.name (the chart sets it)
    k8s_namespace: str = ""  # "" = the service account's namespace file
    k8s_api_url: str = ""  # "" = https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
    k8s_service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    k8s_sync_period_s: float = 10.0  # checks between slot changes; a failed patch retries then

    def __post_init__(self) -> None:
        if self.streamer not in STREAMER_KINDS:
            raise ConfigError(f"agent.streamer must be one of {STREAMER_KINDS}, not {self.streamer!r}")
        if self.drain_mode not in DRAIN_MODES:
            raise ConfigError(f"agent.drain_mode must be one of {DRAIN_MODES}, not {self.drain_mode!r}")
        if self.streamer == "ue" and not (self.ue_binary or self.command):
            raise ConfigError("agent.streamer=ue needs PIXELFLEET_AGENT__UE_BINARY (or a full COMMAND)")
        if self.full_heartbeat_every < 1:
            raise ConfigError("agent.full_heartbeat_every must be 1 or more (1: every heartbeat full)")
        if self.credential_renew_margin_s < 0:
            raise ConfigError("agent.credential_renew_margin_s cannot be negative")
        if self.credential_renew_concurrency < 1:
            raise ConfigError("agent.credential_renew_concurrency must be 1 or more")
        if self.k8s_do_not_disrupt not in ("auto", "on", "off"):
            raise ConfigError(f"agent.k8s_do_not_disrupt must be auto, on or off, not {self.k8s_do_not_disrupt!r}")
        if self.slots < 0 or self.slots_per_gpu < 0 or any(n < 0 for n in self.gpu_slots):
            raise ConfigError("slot counts cannot be negative")

    @property
    def host(self) -> str:
        return self.host_id or socket.gethostname()
