"""autonomy-orchestrator: a self-hosted control plane for fleets of edge nodes."""

__version__ = "0.1.0"
