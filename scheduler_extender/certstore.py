"""Keeps the webhook's TLS current: the bundle in its Secret, the live SSL context, the caBundle.

Every replica runs ``CertKeeper.sync`` at start and whenever a renewal falls due (at most an hour
apart). Replicas race safely: the Secret is created with ``create`` (409 -> another replica won:
read theirs) and renewed with an update carrying the read resourceVersion (409 -> read the winner's).
All replicas then serve certificates of one CA, and each one makes sure the webhook configuration's
``caBundle`` holds it (a JSON Patch guarded by a ``test`` of the webhook's name). The certificate
is swapped into the listening SSL context in place: new handshakes get it, nothing restarts.

With ``cert_dir`` (the cert-manager component) the keeper only reloads ``tls.crt``/``tls.key``
from that directory; cert-manager and its cainjector own the Secret and the caBundle.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler_extender.certs import BadBundle, Bundle, new_bundle, next_check, renewed

if TYPE_CHECKING:
    from locality.kube import Kube

log = logging.getLogger(__name__)

LABELS = {"app.kubernetes.io/name": "model-locality-webhook", "app.kubernetes.io/part-of": "model-locality"}


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_pem(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Put a PEM certificate and key into ``context`` (the ssl module reads only files: a private
    temporary directory, removed at once)."""
    with tempfile.TemporaryDirectory(prefix="ml-webhook-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert_path, key_path)


@dataclass
class CertKeeper:
    """One replica's view of the webhook TLS (see the module docstring)."""

    context: ssl.SSLContext
    hosts: Sequence[str]
    kube: Kube | None = None
    namespace: str = "model-locality"
    secret_name: str = "model-locality-webhook-tls"
    webhook_name: str = "model-locality"
    cert_dir: Path | None = None
    wall: Callable[[], float] = time.time
    most_seconds: float = 3600.0
    ca_bundle: bytes = field(default=b"", init=False)  # what this replica last published

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall(), dt.UTC)

    async def sync(self) -> float:
        """One pass; the seconds until the next one is due."""
        if self.cert_dir is not None:
            cert = (self.cert_dir / "tls.crt").read_bytes()
            load_pem(self.context, cert, (self.cert_dir / "tls.key").read_bytes())
            return min(self.most_seconds, 300.0)  # cert-manager renews the Secret; kubelet remounts it
        if self.kube is None:
            raise ValueError("a CertKeeper without cert_dir needs the Kubernetes API")
        bundle = await self._current()
        load_pem(self.context, bundle.tls_crt, bundle.tls_key)
        await self._publish(bundle.ca_bundle(self.now()))
        return next_check(bundle, self.now(), self.most_seconds)

    async def run(self, first_wait: float) -> None:
        """``sync`` forever (a failed pass is logged and retried within a minute)."""
        wait = first_wait
        while True:
            await asyncio.sleep(wait)
            try:
                wait = await self.sync()
            except Exception as exc:  # the API may be briefly unreachable: keep serving, retry
                log.warning("webhook certificate sync failed (retrying in 60s): %s", exc)
                wait = 60.0

    async def _current(self) -> Bundle:
        from locality.kube import Conflict, NotFound

        assert self.kube is not None
        try:
            secret = await self.kube.get_secret(self.namespace, self.secret_name)
        except NotFound:
            fresh = new_bundle(self.hosts, self.now())
            try:
                await self.kube.create_secret(self.namespace, self._body(fresh))
                log.info("created webhook CA and certificate in Secret %s", self.secret_name)
                return fresh
            except Conflict:  # another replica created it first: use theirs
                secret = await self.kube.get_secret(self.namespace, self.secret_name)
        bundle, successor = self._successor(secret)
        if successor is None:
            assert bundle is not None
            return bundle
        body = self._body(successor)
        body["metadata"]["resourceVersion"] = (secret.get("metadata") or {}).get("resourceVersion")
        try:
            await self.kube.replace_secret(self.namespace, self.secret_name, body)
        except Conflict:  # another replica renewed first: use theirs
            secret = await self.kube.get_secret(self.namespace, self.secret_name)
            won, _ = self._successor(secret)
            if won is None:
                raise
            return won
        log.info("renewed the webhook certificate%s", " and CA" if bundle is None or
                 successor.ca_crt != bundle.ca_crt else "")  # fmt: skip
        return successor

    def _successor(self, secret: dict[str, Any]) -> tuple[Bundle | None, Bundle | None]:
        """(the stored bundle or None when unusable, the bundle to store instead or None)."""
        raw = secret.get("data") or {}
        try:
            data = {str(k): base64.b64decode(v) for k, v in raw.items()}
            bundle = Bundle.from_data(data)
            return bundle, renewed(bundle, self.hosts, self.now())
        except (BadBundle, ValueError, TypeError) as exc:
            log.warning("Secret %s holds no usable bundle (%s): making a new CA", self.secret_name, exc)
            return None, new_bundle(self.hosts, self.now())

    def _body(self, bundle: Bundle) -> dict[str, Any]:
        data = {k: base64.b64encode(v).decode() for k, v in bundle.as_data().items()}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": self.secret_name, "namespace": self.namespace, "labels": dict(LABELS)},
            "data": data,
        }

    async def _publish(self, ca_bundle: bytes) -> None:
        """Set ``caBundle`` on every webhook of our configuration that lacks this one."""
        from locality.kube import NotFound

        assert self.kube is not None
        try:
            config = await self.kube.get_mutating_webhook(self.webhook_name)
        except NotFound:
            log.warning(
                "MutatingWebhookConfiguration %s not found: caBundle not published", self.webhook_name
            )
            return
        wanted = base64.b64encode(ca_bundle).decode()
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(config.get("webhooks") or []):
            client = hook.get("clientConfig") or {}
            if client.get("caBundle") != wanted:
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.get("name")})
                ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted})
        if ops:
            await self.kube.json_patch_mutating_webhook(self.webhook_name, ops)
            log.info("published the webhook CA bundle to %s", self.webhook_name)
        self.ca_bundle = ca_bundle
