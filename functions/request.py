"""Serving a gateway request inside a function: validate the envelope, honour the deadline, reply.

Not a function itself; ``register`` and ``login`` are thin adapters over it.
"""
from __future__ import annotations

import logging
from typing import Callable

from common import rpc
from common.errors import AppError, Code
from functions.api import Event, Invalid, Publish

logger = logging.getLogger(__name__)


def serve(event: Event, ctx, work: Callable[[dict, Callable[[], bool]], object]) -> list[Publish]:
    """Run ``work(body, in_time)`` and publish its result (or its AppError) to the requester's
    channel. ``in_time()`` says whether the deadline is still ahead: work that stores something
    asks it just before committing and raises :class:`common.rpc.Expired` when it is not."""
    request = event.value
    request_id, reply_to = request.get("request_id"), request.get("reply_to")
    body, deadline = request.get("body"), request.get("deadline_ms")
    if not (isinstance(request_id, str) and isinstance(reply_to, str) and isinstance(body, dict)
            and isinstance(deadline, int)):
        raise Invalid(Code.UNMARSHAL_FAILED, "not a request envelope")
    if ctx.now_ms() > deadline:
        logger.info("request %s expired %d ms ago; dropped", request_id, ctx.now_ms() - deadline)
        return []
    try:
        reply = rpc.ok(request_id, work(body, lambda: ctx.now_ms() <= deadline))
    except rpc.Expired:
        logger.info("request %s passed its deadline during the work; rolled back, dropped", request_id)
        return []
    except AppError as exc:
        reply = rpc.error(request_id, exc)
    return [Publish(reply_to, reply)]
