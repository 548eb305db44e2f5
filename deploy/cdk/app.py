"""``cdk deploy -c stage=NAME --all``: every stack of one stage, in the account and region
of the caller's credentials (CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION)."""

from __future__ import annotations

import os

from aws_cdk import Environment
from pixelfleet_deploy.config import stage_from_context
from pixelfleet_deploy.stage import build_stage, new_app

app = new_app()
stage = stage_from_context(app.node.try_get_context("pixelfleet:stages"), app.node.try_get_context("stage") or "dev")
env = Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"))
build_stage(app, stage, env, hipaa=app.node.try_get_context("hipaa") not in (False, "false", "0"))
app.synth()
