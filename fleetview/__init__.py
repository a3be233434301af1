"""The fleet view: ``kubectl model-locality`` (models x nodes, caches and pins, distributions).

Pure rows (``rows``) and rendering (``render``) from API objects; the views (``views``) and the
command line (``cli``) read the cluster through ``locality.kube`` with the user's kubeconfig.
Imports only ``locality``.
"""
