"""replicad — block-level snapshot replication between hospital sites, agreed through Raft.

Layers, lowest first: core (pure) → config → storage, consensus, peer, telemetry (adapters)
→ sources → site (orchestration) → ops (operator surfaces) → lab → cli. Reading order: the
module map of ARCHITECTURE.md.
"""

__version__ = "0.1.0"
