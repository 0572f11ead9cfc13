"""The Node.js images the releases in the cache need, for a runtime that runs images (podman): made
ahead of time by `foundry-fleet runtime image`, and shown by `status` (present or not). Either way an
instance's start makes its image when it is missing, so preparing them is optional.

One image per Foundry generation (the generation decides the Node.js major); a generation whose image
cannot be made is reported and the others are still made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.runtime.podman.images import NodeImage, describe
from foundry_fleet.services.views import ReleaseView

Progress = Callable[[int, str, float | None], None]  # generation, phase, fraction done (None: unknown)


class NodeImageSource(Protocol):
    async def resolve(self, generation: int, progress: Callable[[str, float | None], None] | None = None) -> NodeImage:
        """The image to run for `generation`, pulled or built when it is missing."""

    async def lookup(self, generation: int) -> NodeImage | None:
        """The image `resolve` would use now, without pulling or building; None when there is none."""


@dataclass(frozen=True)
class ReleaseImage:
    generation: int
    releases: list[str]  # the cached releases of this generation
    image: str | None  # the reference an instance of these releases runs
    present: bool | None  # None: unknown (the image service did not answer)
    detail: str
    source: str | None = None  # configured, pulled, built (just now) or cached (built earlier)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def by_generation(releases: list[ReleaseView]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for release in releases:
        found.setdefault(release.generation, []).append(release.version)
    return {generation: sorted(versions) for generation, versions in sorted(found.items())}


async def prepare_images(images: NodeImageSource, releases: list[ReleaseView], progress: Progress) -> list[ReleaseImage]:
    """Make (pull or build) each generation's image unless it is there; idempotent."""
    made = []
    for generation, versions in by_generation(releases).items():
        def report(phase: str, fraction: float | None, generation: int = generation) -> None:
            progress(generation, phase, fraction)

        try:
            image = await images.resolve(generation, report)
        except FleetError as e:
            why = f"{e.message} ({e.hint})" if e.hint else e.message
            made.append(ReleaseImage(generation, versions, None, False, why))
            continue
        made.append(ReleaseImage(generation, versions, image.ref, True, describe(image), image.source))
    return made


async def image_states(images: NodeImageSource, releases: list[ReleaseView]) -> list[ReleaseImage]:
    """Which generations' images are there now; nothing is pulled or built."""
    states = []
    for generation, versions in by_generation(releases).items():
        try:
            image = await images.lookup(generation)
        except FleetError as e:
            states.append(ReleaseImage(generation, versions, None, False, e.message))
            continue
        if image is None:
            states.append(ReleaseImage(generation, versions, None, False,
                                       "not made yet: `foundry-fleet runtime image` makes it (else the first start)"))
        else:
            states.append(ReleaseImage(generation, versions, image.ref, True, describe(image), image.source))
    return states


def unknown_states(releases: list[ReleaseView], why: str) -> list[ReleaseImage]:
    return [ReleaseImage(generation, versions, None, None, why) for generation, versions in by_generation(releases).items()]
