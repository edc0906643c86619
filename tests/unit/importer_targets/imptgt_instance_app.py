"""A module whose app is an instance of a class from elsewhere, as Starlette() is."""

from __future__ import annotations

from imptgt_good_apps import ConfiguredApp  # type: ignore[import-not-found]


def add_routes(app: ConfiguredApp) -> None:
    pass


web = ConfiguredApp("routes")
