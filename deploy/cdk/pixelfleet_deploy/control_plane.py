"""Signalling and the matchmaker on ECS Fargate behind one Network Load Balancer, fronted
by Global Accelerator; each service deploys blue/green (ECS's own strategy: a second target
group takes the new tasks, the listener switches, the old tasks drain).

TCP, not HTTP, all the way: WebSockets stay open for the whole session, so the NLB's idle
timeout is raised to ``nlb_idle_timeout_s`` (signalling pings every 30 s, far inside it) and
deregistration waits ``drain_s``, the time signalling gives its peers on SIGTERM plus the
matchmaker's reconnect grace.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_globalaccelerator as ga
from aws_cdk import aws_globalaccelerator_endpoints as ga_endpoints
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from pixelfleet_deploy.config import StageConfig
from pixelfleet_deploy.data import DataStack

PLAYER_PORT = 80
STREAMER_PORT = 8888
MATCHMAKER_PORT = 9999
# The matchmaker only writes session records (matchmaker/records_dynamodb.py); it never reads them.
SESSION_TABLE_ACTIONS = ("dynamodb:BatchWriteItem", "dynamodb:PutItem")
# The images' health probe: no curl in a slim image, and Python is there anyway.
PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)"
# (listener port on the NLB and Global Accelerator, container port, service)
LISTENERS = (
    (PLAYER_PORT, 8080, "signaling"),
    (STREAMER_PORT, 8888, "signaling"),
    (MATCHMAKER_PORT, 9999, "matchmaker"),
)


class ControlPlaneStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        stage: StageConfig,
        vpc: ec2.IVpc,
        data: DataStack,
        turn_urls: list[str],
        **kwargs: Any,
    ) -> None:
        """``turn_urls``: the relays' ``turn:`` URLs (turn_relay.TurnStack.urls), handed to players."""
        super().__init__(scope, id, **kwargs)
        self.stage_config = stage
        self.cluster = ecs.Cluster(self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENHANCED)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=data.key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.nlb_sg = ec2.SecurityGroup(self, "NlbSg", vpc=vpc, description="NLB: players, streamers, agents")
        for port, _, who in LISTENERS:
            self.nlb_sg.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(port), f"{who} from anywhere")
        self.nlb = elbv2.NetworkLoadBalancer(
            self,
            "Nlb",
            vpc=vpc,
            internet_facing=True,
            cross_zone_enabled=True,
            deletion_protection=True,
            security_groups=[self.nlb_sg],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        )
        self.nlb.log_access_logs(data.lb_logs, prefix="nlb")
        self.task_sg = ec2.SecurityGroup(self, "TaskSg", vpc=vpc, description="control plane tasks")
        self.task_sg.add_ingress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp_range(8080, 9999), "NLB and GPU hosts"
        )
        # Declared here, not on the data stack's group, so the data stack never refers to this one.
        ec2.CfnSecurityGroupIngress(
            self,
            "TasksToRedis",
            group_id=data.redis_sg.security_group_id,
            source_security_group_id=self.task_sg.security_group_id,
            ip_protocol="tcp",
            from_port=stage.redis_port,
            to_port=stage.redis_port,
            description="control plane to Redis (TLS)",
        )

        # The session-token key also signs and checks streamer credentials (signalling's
        # streamer port refuses a streamer without one); the report token is what signalling
        # sends with each connect and disconnect report, and what the matchmaker requires of them.
        common_secrets = {
            "PIXELFLEET_STATE_URL": ecs.Secret.from_secrets_manager(data.state_url),
            "PIXELFLEET_SESSION_TOKEN_SECRET": ecs.Secret.from_secrets_manager(data.session_token_secret),
            "PIXELFLEET_REPORT_TOKEN": ecs.Secret.from_secrets_manager(data.report_token),
        }
        matchmaker_url = f"http://{self.nlb.load_balancer_dns_name}:{MATCHMAKER_PORT}"
        self.signaling = self._service(
            "Signaling",
            data,
            command=["signaling", "--host", "0.0.0.0", "--player-port", "8080", "--sfu-port", "-1"],
            ports=[8080, 8888],
            tasks=stage.signaling_tasks,
            cpu=stage.signaling_cpu,
            memory=stage.signaling_memory_mib,
            environment={
                "PIXELFLEET_MATCHMAKER_URL": matchmaker_url,
                # TURN REST credentials (signed with the TURN secret) for the relays' Elastic IPs
                "PIXELFLEET_TURN__PROVIDER": "rest-secret",
                "PIXELFLEET_TURN__URLS": ",".join(turn_urls),
                "PIXELFLEET_SHUTDOWN_GRACE_S": str(min(stage.drain_s, 60)),
            },
            secrets={**common_secrets, "PIXELFLEET_TURN__SECRETS": ecs.Secret.from_secrets_manager(data.turn_secret)},
        )
        self.matchmaker = self._service(
            "Matchmaker",
            data,
            command=["matchmaker", "--host", "0.0.0.0", "--port", "9999"],
            ports=[9999],
            tasks=stage.matchmaker_tasks,
            cpu=stage.matchmaker_cpu,
            memory=stage.matchmaker_memory_mib,
            environment=matchmaker_environment(stage, data.sessions.table_name),
            secrets={
                **common_secrets,
                # Per-host agent tokens only: with the key set, the fleet-wide token is refused.
                "PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET": ecs.Secret.from_secrets_manager(data.agent_key),
                "PIXELFLEET_ADMIN_TOKEN": ecs.Secret.from_secrets_manager(data.admin_token),
            },
        )
        # Named actions only (a grant_* helper would add kms:GenerateDataKey* and kms:ReEncrypt*).
        task_role = self.matchmaker.task_definition.task_role
        task_role.add_to_principal_policy(
            iam.PolicyStatement(actions=list(SESSION_TABLE_ACTIONS), resources=[data.sessions.table_arn])
        )
        task_role.add_to_principal_policy(
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[data.key.key_arn])
        )

        services = {"signaling": self.signaling, "matchmaker": self.matchmaker}
        self.listeners: list[elbv2.NetworkListener] = []
        for port, container_port, service_name in LISTENERS:
            service = services[service_name]
            listener = self.nlb.add_listener(f"Listener{port}", port=port, protocol=elbv2.Protocol.TCP)
            cfn_listener = listener.node.default_child
            assert isinstance(cfn_listener, elbv2.CfnListener)
            cfn_listener.listener_attributes = [
                elbv2.CfnListener.ListenerAttributeProperty(
                    key="tcp.idle_timeout.seconds", value=str(stage.nlb_idle_timeout_s)
                )
            ]
            blue, green = (
                self._target_group(f"{service_name}{port}{colour}", vpc, container_port) for colour in ("Blue", "Green")
            )
            listener.add_target_groups(f"Default{port}", blue)
            blue.add_target(
                service.load_balancer_target(
                    container_name="app",
                    container_port=container_port,
                    alternate_target=ecs.AlternateTarget(
                        f"Alternate{port}",
                        alternate_target_group=green,
                        production_listener=ecs.ListenerRuleConfiguration.network_listener(listener),
                    ),
                )
            )
            self.listeners.append(listener)

        self.accelerator = ga.Accelerator(self, "Accelerator", accelerator_name=f"pixelfleet-{stage.name}")
        ga_listener = self.accelerator.add_listener(
            "Listener",
            port_ranges=[ga.PortRange(from_port=port) for port, _, _ in LISTENERS],
            protocol=ga.ConnectionProtocol.TCP,
            client_affinity=ga.ClientAffinity.SOURCE_IP,
        )
        ga_listener.add_endpoint_group(
            "Endpoints", endpoints=[ga_endpoints.NetworkLoadBalancerEndpoint(self.nlb, preserve_client_ip=True)]
        )

    def _target_group(self, id: str, vpc: ec2.IVpc, port: int) -> elbv2.NetworkTargetGroup:
        return elbv2.NetworkTargetGroup(
            self,
            id,
            vpc=vpc,
            port=port,
            protocol=elbv2.Protocol.TCP,
            target_type=elbv2.TargetType.IP,
            deregistration_delay=Duration.seconds(self.stage_config.drain_s),
            connection_termination=True,
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.HTTP,
                path="/readyz",  # 503 while a task drains or loses Redis: the NLB stops sending
                port="9999" if port == 9999 else "8080",
                interval=Duration.seconds(10),
                healthy_threshold_count=2,
                unhealthy_threshold_count=2,
            ),
        )

    def _service(
        self,
        id: str,
        data: DataStack,
        *,
        command: list[str],
        ports: list[int],
        tasks: int,
        cpu: int,
        memory: int,
        environment: dict[str, str],
        secrets: dict[str, ecs.Secret],
    ) -> ecs.FargateService:
        task = ecs.FargateTaskDefinition(
            self,
            f"{id}Task",
            cpu=cpu,
            memory_limit_mib=memory,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        health_port = ports[0]
        task.add_container(
            "app",
            image=ecs.ContainerImage.from_ecr_repository(
                data.repositories["control-plane"], tag=self.stage_config.image_tag
            ),
            command=command,
            environment={"PIXELFLEET_LOG_FORMAT": "json", **environment},
            secrets=secrets,
            port_mappings=[ecs.PortMapping(container_port=p) for p in ports],
            logging=ecs.LogDriver.aws_logs(stream_prefix=id.lower(), log_group=self.log_group),
            readonly_root_filesystem=True,
            user="10001",
            stop_timeout=Duration.seconds(min(self.stage_config.drain_s, 120)),
            health_check=ecs.HealthCheck(
                command=[
                    "CMD",
                    "python",
                    "-c",
                    PROBE,
                    f"http://127.0.0.1:{health_port}/livez",
                ],  # restart only a dead process
                interval=Duration.seconds(10),
                retries=3,
                start_period=Duration.seconds(20),
            ),
        )
        task.add_to_execution_role_policy(iam.PolicyStatement(actions=["kms:Decrypt"], resources=[data.key.key_arn]))
        return ecs.FargateService(
            self,
            id,
            cluster=self.cluster,
            task_definition=task,
            desired_count=tasks,
            min_healthy_percent=100,
            max_healthy_percent=200,
            security_groups=[self.task_sg],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            deployment_strategy=ecs.DeploymentStrategy.BLUE_GREEN,
            bake_time=Duration.minutes(5),
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            enable_execute_command=False,
        )


def matchmaker_environment(stage: StageConfig, records_table: str) -> dict[str, str]:
    """The matchmaker task's plain settings: session records (the billing basis) into the
    table, not the task's memory; claims confirmed by the shard's replicas when asked."""
    env = {"PIXELFLEET_MATCHMAKER__RECORDS_TABLE": records_table}
    if stage.redis_wait_replicas:
        env["PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS"] = str(stage.redis_wait_replicas)
    return env
