"""The shared kernel of model-locality: what the agent, the extender and serving all use.

Nothing here belongs to one service. Pure cores (``identity``, ``contract``, ``errors``,
``backoff``, ``digests``) import no I/O library; edges (``kube``, ``agentclient``, ``httpkit``)
are each the one door to their outside system. See ``docs/architecture.md``.
"""
