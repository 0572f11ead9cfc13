"""The web panel's services, from the daemon's own: one operations service, one supervisor, one sampler,
shared with the control API and the bot."""

from __future__ import annotations

from foundry_fleet.config import FleetConfig
from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.services.certificates import CertificateWatch
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.panel_cards import CardSources, PanelCards
from foundry_fleet.services.resource_samples import ResourceSamples
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.web.panel.services import PanelServices
from foundry_fleet.wiring.services import FleetServices


def panel_services(config: FleetConfig, services: FleetServices, operations: Operations, supervisor: Supervisor,
                   backups: Backups, certificates: CertificateWatch, bulletin: Bulletin,
                   samples: ResourceSamples | None) -> PanelServices:
    access = Access(services.instances, frozenset(config.discord.admin_users))
    https_port = config.edge.https_port
    return PanelServices(
        access=access,
        cards=PanelCards(access, CardSources(players=supervisor.users, resources=samples,
                                             history_slots=samples.keep if samples is not None else 1,
                                             newest_snapshots=backups.newest_snapshot_times,
                                             certificate_problems=certificates.problems)),
        operations=operations,
        backups=backups,
        releases=services.releases,
        logs=supervisor.logs,
        bulletin=bulletin,
        port_suffix="" if https_port == 443 else f":{https_port}",
    )
