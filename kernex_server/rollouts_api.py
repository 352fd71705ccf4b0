"""The rollout endpoints under ``/v1/admin/rollouts`` (see docs/rollouts.md).

Reads need the viewer role; acts (pause, resume, promote, abort) need operator and are
audited as ``rollout.<act>`` with the rollout id as target.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.rollout import STATES
from kernex_core.timefmt import format_time
from kernex_server import wire
from kernex_server.admin_api import PREFIX
from kernex_server.api import Answer, Param, operation, route
from kernex_server.audited import audited
from kernex_server.auth import Endpoint, Role, requires
from kernex_server.context import context_of
from kernex_server.http import ApiError, json_response, path_id
from kernex_server.models import Rollout
from kernex_server.rollouts import RolloutActError

ACTS = {
    "pause": "Pause a running rollout: no wave is promoted until it resumes",
    "resume": "Resume a paused or halted rollout (a halt's failures are accepted)",
    "promote": "Admit the next wave now",
    "abort": "Stop a rollout and serve its previous state to devices that moved",
}


def rollout_out(found: dict[str, Any]) -> dict[str, Any]:
    times = ("wave_started_at", "created_at", "updated_at")
    return {**found, **{k: format_time(found[k]) for k in times}}


@operation(
    "GET",
    "Rollouts, newest first",
    ok=wire.RolloutList,
    query=[Param("state", wire.RolloutState, "only rollouts in this state")],
    errors=(400,),
)
@requires(Role.VIEWER)
async def list_rollouts(request: Request) -> Response:
    kx = context_of(request)
    state = request.query_params.get("state") or None
    if state is not None and state not in STATES:
        raise ApiError(400, f"state must be one of {', '.join(STATES)}")
    engine = kx.reconciler.rollouts

    def load() -> list[dict[str, Any]]:
        with kx.store.sessions() as s:
            return engine.list(s, state)

    rows = await anyio.to_thread.run_sync(load)
    return json_response({"rollouts": [rollout_out(r) for r in rows]})


@operation("GET", "One rollout with its waves and devices", ok=wire.Rollout, errors=(404,))
@requires(Role.VIEWER)
async def show_rollout(request: Request) -> Response:
    kx = context_of(request)
    rollout_id = path_id(request, "rollout_id", "rollout")
    engine = kx.reconciler.rollouts

    def load() -> dict[str, Any] | None:
        with kx.store.sessions() as s:
            row = s.get(Rollout, rollout_id)
            return engine.describe(s, row, devices=True) if row is not None else None

    found = await anyio.to_thread.run_sync(load)
    if found is None:
        raise ApiError(404, f"no rollout {rollout_id}", hint="List them: kernex rollouts list")
    return json_response(rollout_out(found))


def _act(verb: str) -> Endpoint:
    async def act(request: Request) -> Response:
        kx = context_of(request)
        rollout_id = path_id(request, "rollout_id", "rollout")
        try:
            found = await kx.rollout_act(rollout_id, verb)
        except RolloutActError as exc:
            raise ApiError(exc.status, exc.message, hint=exc.hint) from exc
        request.state.audit_detail = {"state": found["state"], "wave": found["wave"]}
        return json_response(rollout_out(found))

    act.__name__ = f"{verb}_rollout"
    act.__doc__ = f"{verb.capitalize()} a rollout."
    declare = operation(
        "POST",
        ACTS[verb],
        ok=wire.Rollout,
        ok_text="the rollout after the act",
        answers={409: Answer("the rollout's state does not allow the act", wire.Error)},
        errors=(404,),
    )
    return declare(requires(Role.OPERATOR)(audited(f"rollout.{verb}")(act)))


routes = [
    route(f"{PREFIX}/rollouts", list_rollouts),
    route(f"{PREFIX}/rollouts/{{rollout_id:int}}", show_rollout),
    *(route(f"{PREFIX}/rollouts/{{rollout_id:int}}/{verb}", _act(verb)) for verb in ACTS),
]
