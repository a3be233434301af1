"""The store: the cache on disk (records, staging, commit, recovery, eviction, the root's lock).

It never imports the fetch path: the fetch path writes verified chunks through ``Staging``.
"""
