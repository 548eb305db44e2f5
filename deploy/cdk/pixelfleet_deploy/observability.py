"""The dashboard and the alarms an operator is paged on: no READY slots, players waiting,
errors at the load balancer, and GPU/NVENC load near the top. The GPU figures are the
agent's own CloudWatch metrics (``PIXELFLEET_AGENT__CLOUDWATCH_NAMESPACE``)."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from pixelfleet_deploy.config import StageConfig
from pixelfleet_deploy.control_plane import ControlPlaneStack
from pixelfleet_deploy.gpu_fleet import CLOUDWATCH_NAMESPACE


def agent_metric(name: str, statistic: str) -> cw.Metric:
    # SEARCH-free: the agent's datums carry Host/App dimensions; the alarm takes the fleet-wide figure.
    return cw.Metric(namespace=CLOUDWATCH_NAMESPACE, metric_name=name, statistic=statistic, period=Duration.minutes(1))


class ObservabilityStack(Stack):
    def __init__(
        self, scope: Construct, id: str, *, stage: StageConfig, control: ControlPlaneStack, key: kms.IKey, **kwargs: Any
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self.topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True)
        if stage.alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(stage.alarm_email))
        free_slots = agent_metric("FreeSlots", "Sum")
        gpu = agent_metric("GpuUtilization", "Maximum")
        nvenc = agent_metric("EncoderUtilization", "Maximum")
        queue_wait = cw.Metric(
            namespace=CLOUDWATCH_NAMESPACE, metric_name="QueueWaitSeconds", statistic="p90", period=Duration.minutes(1)
        )
        resets = cw.Metric(
            namespace="AWS/NetworkELB",
            metric_name="TCP_Target_Reset_Count",
            dimensions_map={"LoadBalancer": control.nlb.load_balancer_full_name},
            statistic="Sum",
            period=Duration.minutes(1),
        )
        unhealthy = cw.Metric(
            namespace="AWS/NetworkELB",
            metric_name="UnHealthyHostCount",
            dimensions_map={"LoadBalancer": control.nlb.load_balancer_full_name},
            statistic="Maximum",
            period=Duration.minutes(1),
        )
        self.alarms = [
            cw.Alarm(
                self,
                "NoReadySlots",
                alarm_description="No READY slot in the fleet: new players queue",
                metric=free_slots,
                threshold=1,
                comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                evaluation_periods=3,
                treat_missing_data=cw.TreatMissingData.BREACHING,
            ),
            cw.Alarm(
                self,
                "QueueWait",
                alarm_description="Players wait more than 60 s for a slot (p90)",
                metric=queue_wait,
                threshold=60,
                evaluation_periods=5,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
            cw.Alarm(
                self,
                "Errors",
                alarm_description="Connections reset by the control plane's targets",
                metric=resets,
                threshold=50,
                evaluation_periods=3,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
            cw.Alarm(
                self,
                "UnhealthyTargets",
                alarm_description="A control plane task fails its health check",
                metric=unhealthy,
                threshold=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=3,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
            cw.Alarm(
                self,
                "GpuLoad",
                alarm_description="A GPU above 95 % for 5 minutes",
                metric=gpu,
                threshold=95,
                evaluation_periods=5,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
            cw.Alarm(
                self,
                "NvencLoad",
                alarm_description="An NVENC encoder above 90 % for 5 minutes: streams will drop frames",
                metric=nvenc,
                threshold=90,
                evaluation_periods=5,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        ]
        for alarm in self.alarms:
            alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"pixelfleet-{stage.name}")
        dashboard.add_widgets(
            cw.GraphWidget(title="READY slots", left=[free_slots]),
            cw.GraphWidget(title="queue wait p90 (s)", left=[queue_wait]),
            cw.GraphWidget(title="GPU and NVENC load (%)", left=[gpu, nvenc]),
            cw.GraphWidget(title="NLB resets, unhealthy targets", left=[resets], right=[unhealthy]),
        )
        dashboard.add_widgets(cw.AlarmStatusWidget(alarms=list(self.alarms), title="alarms", width=24))
