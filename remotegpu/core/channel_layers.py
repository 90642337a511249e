"""The channel layer: channels-redis's, with a receive that cannot outlive its cancellation.

On Python 3.11, ``asyncio.wait_for`` loses a cancellation that arrives in the same moment as
the result it waits for (CPython gh-86296; 3.12 rebuilt ``wait_for`` on ``asyncio.timeout``).
redis-py waits that way while it opens a connection, and channels-redis's ``receive`` runs
BZPOPMIN in a loop that only a cancellation ends. A consumer whose socket closes while its
first receive is still connecting to Redis then never finishes: daphne keeps the task and its
Redis connection polling every five seconds forever, and an event loop shutting down (a test's
``async_to_sync``) waits for it forever.

A task keeps counting the cancellations it was asked for even when the exception was lost
(``Task.cancelling()``), so the receive loop checks that count before each BZPOPMIN and
raises the cancellation it was owed. Nothing is lost by raising there: channels-redis keeps
a popped message in a backup queue until it is processed and puts it back on the next
receive.
"""

from __future__ import annotations

import asyncio

from channels_redis.core import RedisChannelLayer as _RedisChannelLayer


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task was asked to cancel and kept running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisChannelLayer(_RedisChannelLayer):
    async def _brpop_with_clean(self, index, channel, timeout):
        raise_if_cancelling()
        return await super()._brpop_with_clean(index, channel, timeout)
