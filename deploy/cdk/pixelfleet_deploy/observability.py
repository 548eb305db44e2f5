"""The dashboard and the alarms an operator is paged on: no READY slots, players queued,
errors at the load balancer, and GPU/NVENC load near the top.

The slot and GPU figures are the agents' own CloudWatch metrics
(``PIXELFLEET_AGENT__CLOUDWATCH_NAMESPACE``, gpu_agent/cloudwatch.py), published per host
with the dimensions Host and App (and Gpu for the per-GPU ones). CloudWatch never adds up
custom metrics across dimensions, so a metric read without them has no data: the alarms
read Metrics Insights queries over the published dimension set (``SCHEMA(ns, App, Host)``),
one per pool's app for READY slots. Players queued come from the matchmaker's ``queued``
log lines through a metric filter on the control plane's log group.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from pixelfleet_deploy.config import StageConfig
from pixelfleet_deploy.control_plane import ControlPlaneStack
from pixelfleet_deploy.gpu_fleet import CLOUDWATCH_NAMESPACE

# The dimension names each agent metric is published with (gpu_agent.cloudwatch.metric_data).
AGENT_DIMENSIONS = {
    "FreeSlots": ("App", "Host"),
    "GpuUtilization": ("App", "Gpu", "Host"),
    "EncoderUtilization": ("App", "Gpu", "Host"),
}
QUEUED_METRIC = "PlayersQueued"


def agent_query(function: str, name: str, label: str, app: str | None = None) -> cw.MathExpression:
    """A Metrics Insights query over every host's series of ``name``: one time series, so an
    alarm can read it (SEARCH expressions return many and cannot be alarmed on)."""
    schema = ", ".join([f'"{CLOUDWATCH_NAMESPACE}"', *AGENT_DIMENSIONS[name]])
    where = f" WHERE App = '{app}'" if app is not None else ""
    return cw.MathExpression(
        expression=f"SELECT {function}({name}) FROM SCHEMA({schema}){where}",
        using_metrics={},
        label=label,
        period=Duration.minutes(1),
    )


class ObservabilityStack(Stack):
    def __init__(
        self, scope: Construct, id: str, *, stage: StageConfig, control: ControlPlaneStack, key: kms.IKey, **kwargs: Any
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self.topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True)
        if stage.alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(stage.alarm_email))
        apps = sorted({pool.app for pool in stage.pools})
        free_slots = {app: agent_query("SUM", "FreeSlots", f"READY slots ({app})", app) for app in apps}
        gpu = agent_query("MAX", "GpuUtilization", "busiest GPU (%)")
        nvenc = agent_query("MAX", "EncoderUtilization", "busiest NVENC (%)")
        # The matchmaker logs `queued` (JSON, field `event`) each time a player joins the queue
        # because no READY slot could take them.
        logs.MetricFilter(
            self,
            "QueuedFilter",
            log_group=control.log_group,
            filter_pattern=logs.FilterPattern.string_value("$.event", "=", "queued"),
            metric_namespace=CLOUDWATCH_NAMESPACE,
            metric_name=QUEUED_METRIC,
            metric_value="1",
        )
        queued = cw.Metric(
            namespace=CLOUDWATCH_NAMESPACE, metric_name=QUEUED_METRIC, statistic="Sum", period=Duration.minutes(5)
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
            *(
                cw.Alarm(
                    self,
                    f"NoReadySlots-{app}",
                    alarm_description=f"No READY slot for app {app}: its new players queue",
                    metric=metric,
                    threshold=1,
                    comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                    evaluation_periods=3,
                    treat_missing_data=cw.TreatMissingData.BREACHING,  # no agent reporting: no slot either
                )
                for app, metric in free_slots.items()
            ),
            cw.Alarm(
                self,
                "PlayersQueued",
                alarm_description="10 or more players had to queue for a slot in 5 minutes",
                metric=queued,
                threshold=10,
                evaluation_periods=1,
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
            cw.GraphWidget(title="READY slots", left=list(free_slots.values())),
            cw.GraphWidget(title="players queued (per 5 min)", left=[queued]),
            cw.GraphWidget(title="GPU and NVENC load (%)", left=[gpu, nvenc]),
            cw.GraphWidget(title="NLB resets, unhealthy targets", left=[resets], right=[unhealthy]),
        )
        dashboard.add_widgets(cw.AlarmStatusWidget(alarms=list(self.alarms), title="alarms", width=24))
