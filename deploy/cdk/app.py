"""``cdk deploy -c stage=NAME -c imageTag=TAG --all``: every stack of one stage, in the account
and region of the caller's credentials (CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION), running the
images the pipeline pushed with tag TAG. Without ``imageTag`` (no image exists yet): the
network, data and pipeline stacks only; the pipeline's first run deploys the rest."""

from __future__ import annotations

import dataclasses
import os

from aws_cdk import Environment
from pixelfleet_deploy.config import stage_from_context
from pixelfleet_deploy.stage import build_bootstrap, build_stage, new_app

app = new_app()
stage = stage_from_context(app.node.try_get_context("pixelfleet:stages"), app.node.try_get_context("stage") or "dev")
tag = app.node.try_get_context("imageTag")
if tag:
    stage = dataclasses.replace(stage, image_tag=str(tag))
env = Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"))
hipaa = app.node.try_get_context("hipaa") not in (False, "false", "0")
if stage.image_tag:
    build_stage(app, stage, env, hipaa=hipaa)
else:
    build_bootstrap(app, stage, env, hipaa=hipaa)
app.synth()
