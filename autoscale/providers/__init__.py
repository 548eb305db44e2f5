"""Fleet providers: where hosts come from (``local`` on this box, ``aws-asg`` on EC2)."""
