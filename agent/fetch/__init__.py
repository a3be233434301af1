"""The fetch path: origins, chunk sources and transfer; writes verified chunks into the store."""
