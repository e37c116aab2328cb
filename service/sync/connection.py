"""Every Redis client embserve opens is made here: one Redis node, or a Redis Cluster.

`redis_cluster` (`EMBSERVE_REDIS_CLUSTER`, `--redis-cluster`) picks redis-py's cluster clients,
which learn the slot map from the node in the URL and send each command to the node owning its
key. The commands embserve issues are cluster-safe by construction (see `keys`): every command
and every transaction touches the keys of one table (one slot through the `{<table>}` hash tag) or
one single-key structure; the non-transactional pipeline that reads every table's version is
split per node by the cluster client; XREAD reads one table's stream at a time; tables and
replicas are found through a set and a sorted set, never SCAN or KEYS. Pub/sub hints use the
cluster's pub/sub (a published message reaches subscribers on every node).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from runtime.errors import InvalidRequest

FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)
"""What a Redis call raises when Redis (or the cluster) is unreachable or refuses: callers retry or
report these; redis-py's cluster errors are not all RedisError subclasses."""
__all__ = ["FAILURES", "ResponseError", "async_client", "check_url", "subscribe", "sync_client"]
CONNECT_TIMEOUT_SECONDS = 2.0


def check_url(url: str, cluster: bool) -> None:
    """A URL redis-py cannot take (no scheme, a typo), or one a Redis Cluster cannot (a database
    other than 0, a unix socket): refused here in one line that names the part, never the
    password, rather than deep inside redis-py."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        given = f"{parts.scheme}://" if parts.scheme else "none"
        raise InvalidRequest(f"a Redis URL starts with redis://, rediss:// or unix://, got {given}")
    try:
        parts.port  # noqa: B018  (parsed on access: a port that is not a number raises here)
    except ValueError:
        raise InvalidRequest("the Redis URL's port is not a number from 0 to 65535") from None
    try:
        options = parse_url(url)  # its query options (socket_timeout=3), as redis-py will read them
    except ValueError as exc:
        raise InvalidRequest(f"the Redis URL: {exc}") from None
    if str(options.get("ssl_cert_reqs", "required")).lower() not in ("none", "optional", "required"):
        raise InvalidRequest("the Redis URL's ssl_cert_reqs must be none, optional or required")
    if not cluster:
        return
    if parts.scheme not in ("redis", "rediss"):
        raise InvalidRequest(f"a Redis Cluster URL is redis:// or rediss://, got {parts.scheme or '(none)'}://")
    database = parts.path.strip("/")
    if database not in ("", "0"):
        raise InvalidRequest(f"a Redis Cluster has database 0 only, the URL names database {database}")


def async_client(url: str, cluster: bool, *, decode_responses: bool, socket_timeout: float = 5.0) -> Any:
    """An asyncio client for `url` (redis:// or rediss://, password in the URL) with short
    timeouts, so an unreachable Redis is noticed in seconds and never hangs a caller.
    `decode_responses`: replies as str (registry, status) or bytes (update log fields)."""
    check_url(url, cluster)
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": socket_timeout,
        "health_check_interval": 10,
    }
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **options)
    import redis.asyncio

    return redis.asyncio.from_url(url, **options)


def sync_client(url: str, cluster: bool, *, socket_timeout: float = 10.0) -> Any:
    """A synchronous client for `url` (bytes replies): the producer (`push`), compaction, and a
    replica's update-log reads (made in the threads that read, off the event loop)."""
    check_url(url, cluster)
    options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_SECONDS, "socket_timeout": socket_timeout}
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **options)
    import redis

    return redis.Redis.from_url(url, **options)


async def subscribe(client: Any, channel: str) -> Any:
    """A pub/sub object of `client` subscribed to `channel`. A cluster client learns the slot map
    first: its pub/sub picks the node to listen on from the channel's slot (a message published on
    any node reaches it)."""
    await client.initialize()
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
    except BaseException:
        await pubsub.aclose()
        raise
    return pubsub
