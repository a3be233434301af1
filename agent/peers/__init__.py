"""Peers: agents fetch verified chunks from each other, so each byte leaves the origin about once."""
