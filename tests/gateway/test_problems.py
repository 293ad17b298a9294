"""Every reason a service can give has an HTTP status; user mistakes are 4xx."""

from __future__ import annotations

from collections.abc import Callable

from gateway.problems import STATUS_OF_REASON
from services.common.errors import Reason
from tests.conftest import ServiceProcess

StartService = Callable[..., ServiceProcess]


def test_every_reason_has_a_status_and_user_mistakes_are_4xx() -> None:
    assert set(STATUS_OF_REASON) == {str(r) for r in Reason}
    ours = {Reason.INTERNAL, Reason.EMBEDDING_MODEL_MISMATCH}
    for reason, status in STATUS_OF_REASON.items():
        assert (status >= 500) == (Reason(reason) in ours or status in (503, 504)), reason
