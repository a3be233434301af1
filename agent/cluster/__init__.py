"""Cluster sync: this Node's labels and annotations, the pod and distribution watches, the access policy."""
