"""The license key and the admin password of an instance are the fleet admins' to set: a tenant (even
the instance's owner) is refused before anything is written."""

from __future__ import annotations

import pytest

from foundry_fleet.api.endpoints import PRINCIPAL_HEADER
from tests.support.panel_login import OWNER
from tests.unit.test_api_panel_link import control_api


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/instances/alice/license", {"license_key": "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"}),
    ("POST", "/v1/instances/alice/admin-password", {"password": None}),
])
def test_a_tenant_may_not_set_the_license_or_the_admin_password(method: str, path: str, body: dict) -> None:
    api = control_api(None)
    r = api.request(method, path, json=body, headers={PRINCIPAL_HEADER: OWNER})
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text  # the operations were never reached
