"""Pointing clients at a host: DNS (a hook script, or the record printed for the operator) and the Telegram webhook.
Used by cutover (source → target) and rollback (back)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from timetodo.ops.errors import StepError

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context

log = logging.getLogger("timetodo.ops.migrate")


async def point_dns(ctx: Context, old: str, new: str) -> dict[str, Any]:
    dns = ctx.config.dns
    if dns.hook:
        proc = await asyncio.create_subprocess_exec(
            str(dns.hook), dns.record or "", old, new, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise StepError(f"DNS hook {dns.hook} failed (exit {proc.returncode}): {err.decode()[-300:]}")
        return {"hook": str(dns.hook), "output": out.decode()[-300:]}
    ctx.console.print(f"[bold]DNS:[/] point {dns.record or 'your API name'} at {new} (it served {old})")
    return {"printed": f"{dns.record or '?'} → {new}"}


async def switch(ctx: Context) -> dict[str, Any]:
    """The source's forwarding mode first (from then on a client still on the old address reaches the target: its
    writes are accepted again), then DNS (printed or handed to the hook), then the Telegram webhook to the target
    with pending updates kept, confirmed by getWebhookInfo."""
    forward_to = ctx.config.target.forward_url or ctx.config.target.public_url
    forwarded = await ctx.source_api().forwarding(forward_to)
    if forwarded:
        ctx.state.forget("forwarding_ended_at")
        ctx.state.remember(forwarding_started_at=time.time())
    result: dict[str, Any] = {"forwarding": forward_to if forwarded else None}
    result["dns"] = await point_dns(ctx, ctx.config.source.api_url, ctx.config.target.public_url)
    ctx.state.remember(writes_switched_at=time.time())
    client = ctx.telegram()
    if client is not None:
        async with client:
            before = await client.get_webhook_info()
            ctx.state.remember(webhook_before=before.url)
            switched = await client.switch_webhook(
                ctx.webhook_url(ctx.config.target.public_url), secret_token=ctx.secrets.webhook_secret
            )
            result["telegram"] = switched.to_dict()
            if not switched.confirmed:
                log.warning("webhook switched but not confirmed", extra={"error": str(switched.error)})
    return result


async def end_forwarding(ctx: Context) -> bool:
    """The source answers for itself again (still frozen until rollback or the operator unfreezes it)."""
    if ctx.state.facts.forwarding_started_at is None or ctx.state.facts.forwarding_ended_at is not None:
        return False
    await ctx.source_api().forwarding(None)
    ctx.state.remember(forwarding_ended_at=time.time())
    return True


async def switch_back(ctx: Context) -> dict[str, Any]:
    """Forwarding ended (the source must not proxy to a target that is about to stop), the Telegram webhook back to
    where it pointed before the switch, then DNS back to the source."""
    result: dict[str, Any] = {"forwarding_ended": await end_forwarding(ctx)}
    client = ctx.telegram()
    if client is not None:
        async with client:
            back = ctx.state.facts.webhook_before or ctx.webhook_url(ctx.config.source.api_url)
            result["telegram"] = (await client.switch_webhook(back, secret_token=ctx.secrets.webhook_secret)).to_dict()
    result["dns"] = await point_dns(ctx, ctx.config.target.public_url, ctx.config.source.api_url)
    return result
