"""Fault campaigns on real site processes in network namespaces.

Modules: :mod:`chaos.harness` (namespaces, processes, admin calls, history),
:mod:`chaos.workload` (verifiable block writes and snapshots), :mod:`chaos.nemesis`
(faults), :mod:`chaos.checker` (offline invariants on the history and the files),
:mod:`chaos.scenarios` (named, seeded campaigns) and :mod:`chaos.run` (the command line).
"""
