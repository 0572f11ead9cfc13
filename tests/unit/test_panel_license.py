"""The instance page says whether a Foundry license key is set, never the key; when none is, what to do:
the command for an admin, whom to ask for a tenant (only admins set keys). Live updates carry the same.

The fleet and the sign-in of tests/unit/test_panel_admin.py."""

from __future__ import annotations

import re

from tests.unit.test_panel_admin import ADMIN_ID, TENANT_ID, Browser, World, build_panel, world  # noqa: F401 (its fixture)

KEY = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"


def _license_fact(page: str) -> str:
    found = re.search(r"<dt>License key</dt><dd>(.*?)</dd>", page, re.S)
    assert found is not None, "no license key on the page"
    return re.sub(r"<[^>]+>", "", found[1])


def test_the_instance_page_says_whether_a_license_key_is_set_and_what_to_do_when_not(world: World) -> None:  # noqa: F811
    world.fleet.provisioning.create("cli:admin", "lena", "13.345", owner=TENANT_ID, start=False)
    panel, _ = build_panel(world)
    admin, tenant = Browser(panel, world.cookies[ADMIN_ID]), Browser(panel, world.cookies[TENANT_ID])

    missing = _license_fact(tenant.get("/instances/lena").text)
    assert missing.startswith("missing") and "Foundry shows its license page" in missing
    assert "ask a fleet admin to set it" in missing and "foundry-fleet" not in missing
    told = _license_fact(admin.get("/instances/lena").text)
    assert "foundry-fleet instance set lena --license-file FILE" in told

    world.fleet.provisioning.set_license("cli:admin", "lena", KEY)
    for browser in (admin, tenant):
        page = browser.get("/instances/lena").text
        assert _license_fact(page) == "set"
        assert KEY not in page and KEY.replace("-", "") not in page
