"""What routes ask FastAPI for: the score client, the settings, and an API key's scope."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from gateway.auth import Authenticator, Scope
from gateway.score_client import ScoreClient
from gateway.settings import GatewaySettings


def score_client(request: Request) -> ScoreClient:
    client: ScoreClient = request.app.state.score
    return client


def gateway_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


Score = Annotated[ScoreClient, Depends(score_client)]
Settings = Annotated[GatewaySettings, Depends(gateway_settings)]


def requires(scope: Scope) -> Any:
    """A route dependency: the request's API key must hold `scope` (when keys are on)."""

    def check(request: Request) -> None:
        auth: Authenticator = request.app.state.auth
        auth.check(request, scope)

    return Depends(check)


READ, WRITE, ADMIN = requires(Scope.READ), requires(Scope.WRITE), requires(Scope.ADMIN)
