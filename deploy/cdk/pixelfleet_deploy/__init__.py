"""pixelfleet on AWS as code: the CDK app's stacks (see docs/deploy.md)."""
