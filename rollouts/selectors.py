"""Reads of rollout state."""

from __future__ import annotations

from releases.models import Release


def desired_release_for_node(*, latest: Release, node_id: str) -> Release | None:
    """The release `node_id` should run when `latest` is its channel's latest release
    (rollout-aware, API.md §4 "Which release a node gets"). None: no release for this node."""
    return latest


def rollout_phase_counts() -> dict[str, int]:
    """Number of rollout plans per phase, for the `cp_rollout_plans_total` metric."""
    return {}
