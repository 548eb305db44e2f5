"""One reading of a Redis state URL for every service that uses Redis."""

from __future__ import annotations


def split_cluster_flag(url: str) -> tuple[str, bool]:
    """``redis://h:p/0?cluster=1`` -> (``redis://h:p/0``, True): redis-py does not know the
    ``cluster`` parameter, so it is taken off and says whether to use Redis Cluster."""
    if "?" not in url:
        return url, False
    cluster = False
    base, query = url.split("?", 1)
    kept = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name == "cluster":
            cluster = value.lower() in ("1", "true", "yes", "on", "")
        elif item:
            kept.append(item)
    url = base + ("?" + "&".join(kept) if kept else "")
    if cluster and url.startswith("unix:"):
        raise ValueError("Redis Cluster is reached over TCP: use redis:// or rediss:// with cluster=1")
    return url, cluster
