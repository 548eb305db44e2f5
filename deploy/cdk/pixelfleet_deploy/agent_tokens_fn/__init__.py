"""The agent-token Lambda's code (``handler.py``): shipped alone as the function's asset."""
