"""The registry fixture: Debian's docker-registry starts on 127.0.0.1 and takes a push over its HTTP
API, anonymously, with htpasswd (basic) auth, and with bearer tokens from our token server over TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.fixtures.registry import OCI_MANIFEST, descriptor, run_registry, sha256


@pytest.mark.parametrize(("auth", "tls"), [("none", False), ("basic", False), ("token", True)])
def test_registry_accepts_a_push(tmp_path: Path, auth: str, tls: bool) -> None:
    with run_registry(tmp_path / "reg", auth=auth, tls=tls) as reg:
        blob = reg.push_blob("models/tiny", b"weights")
        config = reg.push_blob("models/tiny", b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example+type",
            "config": descriptor("application/vnd.oci.empty.v1+json", config),
            "layers": [descriptor("application/vnd.example.raw", blob)],
        }
        digest, _ = reg.push_manifest("models/tiny", "v1", manifest)
        got = reg.request("GET", "/v2/models/tiny/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == digest
        assert reg.request("GET", f"/v2/models/tiny/blobs/{blob[0]}").content == b"weights"
        assert blob[0] == sha256(b"weights")
        verify = str(reg.ca.ca_file) if reg.ca else True
        url, accept = f"{reg.url}/v2/models/tiny/manifests/v1", {"Accept": OCI_MANIFEST}
        anonymous = requests.get(url, headers=accept, verify=verify, timeout=10)
        assert anonymous.status_code == (200 if auth == "none" else 401)
