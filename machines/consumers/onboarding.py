"""The onboarding page's WebSocket: ``/ws/onboarding/<job_id>/``."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import translation

from remotegpu.core.websockets import CLOSE_NOT_FOUND, CLOSE_NOT_SIGNED_IN, scope_language

from ..models import OnboardingJob
from ..services.onboarding import onboarding_group
from ..views.onboarding import render_progress


class OnboardingConsumer(AsyncJsonWebsocketConsumer):
    """Pushes an onboarding job's rendered progress to its page, on connect and on every change.

    Server → client only: ``{"type": "onboarding", "status": "...", "html": "..."}``; the page
    reloads when ``status`` differs from the one it was rendered for, and swaps ``html`` in
    otherwise. Operators only (staff session; the Origin is checked by
    ``AllowedHostsOriginValidator`` before this runs): anyone else is closed with 4401 (not
    signed in) or 4404. Changes reach the group ``onboarding.job.<id>`` after commit.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        if not user.is_staff or not await self._exists(job_id):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.job_id = job_id
        self.language = scope_language(self.scope)
        self.group = onboarding_group(job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._push()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """Push-only: confirming and cancelling go through the page's forms."""

    async def onboarding_changed(self, event):
        await self._push()

    @database_sync_to_async
    def _exists(self, job_id: int) -> bool:
        return OnboardingJob.objects.filter(pk=job_id).exists()

    @database_sync_to_async
    def _render(self) -> dict | None:
        job = (
            OnboardingJob.objects.select_related("region", "host", "created_by")
            .filter(pk=self.job_id)
            .first()
        )
        if job is None:
            return None
        with translation.override(self.language):
            return {"type": "onboarding", "status": job.status, "html": render_progress(job)}

    async def _push(self):
        message = await self._render()
        if message is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.send_json(message)
