"""The channel layer against the real Redis: a receive ends when its task was cancelled."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from remotegpu.core.channel_layers import RedisChannelLayer


def _layer() -> RedisChannelLayer:
    return RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


async def _lose_a_cancellation() -> None:
    """What Python 3.11's wait_for does when a cancel meets the result it waited for."""
    asyncio.current_task().cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)


def test_a_receive_raises_the_cancellation_its_task_lost():
    layer = _layer()

    async def scenario():
        channel = await layer.new_channel()
        await _lose_a_cancellation()
        assert asyncio.current_task().cancelling() == 1
        # Without the check the receive polls Redis until a message comes: the deadline ends
        # that wait (with a cancellation of its own) and tells the two apart.
        async with asyncio.timeout(3) as deadline:
            with pytest.raises(asyncio.CancelledError):
                await layer.receive(channel)
        assert not deadline.expired()
        await layer.flush()

    async_to_sync(scenario)()


def test_a_receive_still_gets_its_message():
    layer = _layer()

    async def scenario():
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello", "n": 1})
        message = await layer.receive(channel)
        await layer.flush()
        return message

    assert async_to_sync(scenario)() == {"type": "hello", "n": 1}
