"""replicad — block-level snapshot replication between hospital sites, agreed through Raft.

Reading order: ARCHITECTURE.md, then errors → config → chunkstore → manifest → scan →
anomaly → state → consensus → wire → transport → daemon → restore → admin → cli → demo.
"""

__version__ = "0.1.0"
