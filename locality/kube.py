"""The one door to the Kubernetes API: list, watch, get and the few writes we make, as plain dicts.

The sync ``kubernetes`` client runs in worker threads (``asyncio.to_thread``); objects come
back exactly as on the wire (camelCase JSON). Library and transport errors become
``KubeError`` (``NotFound`` 404, ``Conflict`` 409, ``Gone`` 410) with the original chained.
Each call makes one attempt (connect failures aside): callers own their retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes import config as _k8s_config

from locality import errors

GROUP = "model-locality.io"
VERSION = "v1alpha1"
PLURAL = "modeldistributions"
KIND = "ModelDistribution"
POLICY_PLURAL = "modelaccesspolicies"

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# The config loaders are typed loosely upstream; we call them through Any.
k8s_config: Any = _k8s_config

Kind = Literal["nodes", "pods", "modeldistributions", "modelaccesspolicies"]
WorkloadKind = Literal["Deployment", "HorizontalPodAutoscaler"]


class KubeError(errors.Unavailable):
    """A failed Kubernetes API call; ``status`` is the HTTP status when there was one.

    A domain error: unhandled, a client sees 503 (the API server is a dependency we could not use);
    ``NotFound`` and ``Conflict`` are also the domain's own (404, 409).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(errors.NotFound, KubeError):
    """404: the object does not exist."""


class Conflict(errors.Conflict, KubeError):
    """409: a stale resourceVersion or an object that already exists."""


class Gone(KubeError):
    """410: the resourceVersion is too old (compacted); list again."""


@dataclass(frozen=True)
class WatchEvent:
    """One watch event: ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK."""

    type: str
    object: dict[str, Any]


_BY_STATUS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict, 410: Gone}
_TRANSPORT_ERRORS = (k8s.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


def _error(status: int | None, message: str) -> KubeError:
    return _BY_STATUS.get(status or 0, KubeError)(message, status)


def _from_library(err: Exception) -> KubeError:
    """Our error for a library exception: the Status message when the server sent one."""
    if isinstance(err, k8s.ApiException):
        message = str(err.reason or "")
        with contextlib.suppress(ValueError, TypeError):
            message = json.loads(err.body or "").get("message") or message
        return _error(err.status, f"Kubernetes API {err.status}: {message}")
    return KubeError(f"Kubernetes API unreachable: {type(err).__name__}: {err}")


def _decode(response: Any) -> dict[str, Any]:
    body = json.loads(response.data)
    if not isinstance(body, dict):
        raise ValueError("the API server answered something other than a JSON object")
    return body


class Kube:
    """A connection to one API server (see ``connect``)."""

    def __init__(self, api_client: Any, *, request_timeout: float = 10.0) -> None:
        self._api = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._authn = k8s.AuthenticationV1Api(api_client)
        self._authz = k8s.AuthorizationV1Api(api_client)
        self._admission = k8s.AdmissionregistrationV1Api(api_client)
        self._apps = k8s.AppsV1Api(api_client)
        self._autoscaling = k8s.AutoscalingV2Api(api_client)
        self._timeout = request_timeout
        self._watches: set[Any] = set()  # open watch responses, shut down by close()
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, kubeconfig: str | None = None, *, request_timeout: float = 10.0) -> Kube | None:
        """kubeconfig path -> that file; else in-cluster config when it is available; else None."""
        configuration = k8s.Configuration()
        if kubeconfig:
            try:
                k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            except Exception as err:  # missing file, bad YAML, no context: all one user error
                raise KubeError(f"cannot use kubeconfig {kubeconfig}: {err}") from err
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except k8s_config.ConfigException:
                return None
        return cls._with(configuration, request_timeout)

    @classmethod
    def connect_user(
        cls, kubeconfig: str | None = None, context: str | None = None, *, request_timeout: float = 10.0
    ) -> Kube:
        """As ``kubectl`` does: ``kubeconfig`` or else ``$KUBECONFIG`` (a ``:``-list) or else
        ``~/.kube/config``, with ``context`` or the current one; ``KubeError`` when none is usable."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except Exception as err:  # missing file, bad YAML, unknown context: all one user error
            raise KubeError(f"cannot use kubeconfig {kubeconfig or '(default)'}: {err}") from err
        return cls._with(configuration, request_timeout)

    @classmethod
    def _with(cls, configuration: Any, request_timeout: float) -> Kube:
        # Retry only connection set-up; a read that failed or timed out is the caller's call.
        configuration.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0)
        return cls(k8s.ApiClient(configuration), request_timeout=request_timeout)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one raw API call in a thread; decode the JSON body; map errors."""

        def call() -> dict[str, Any]:
            try:
                response = fn(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
                try:
                    return _decode(response)
                finally:
                    response.release_conn()
            except _TRANSPORT_ERRORS as err:
                raise _from_library(err) from err

        return await asyncio.to_thread(call)

    def _lister(self, kind: Kind, namespace: str | None = None) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if kind == "nodes":
            return self._core.list_node, ()
        if kind == "pods" and namespace:
            return self._core.list_namespaced_pod, (namespace,)
        if kind == "pods":
            return self._core.list_pod_for_all_namespaces, ()
        if kind == "modeldistributions":
            return self._custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
        if kind == "modelaccesspolicies":
            return self._custom.list_cluster_custom_object, (GROUP, VERSION, POLICY_PLURAL)
        raise ValueError(f"unknown kind {kind!r}")

    async def list(
        self,
        kind: Kind,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
        resource_version: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every matching object (pods: of ``namespace`` when given, else of all namespaces),
        and the list's resourceVersion (to watch from). ``resource_version="0"``: any recent state,
        served from the API server's watch cache instead of etcd (cheap; may be a moment old)."""
        fn, args = self._lister(kind, namespace)
        extra = {"resource_version": resource_version} if resource_version is not None else {}
        body = await self._call(
            fn, *args, label_selector=label_selector, field_selector=field_selector, **extra
        )
        return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        if kind == "nodes":
            return await self._call(self._core.read_node, name)
        if kind == "pods":
            return await self._call(self._core.read_namespaced_pod, name, namespace or "default")
        if kind == "modeldistributions":
            return await self._call(self._custom.get_cluster_custom_object, GROUP, VERSION, PLURAL, name)
        raise ValueError(f"unknown kind {kind!r}")

    async def get_workload(self, kind: WorkloadKind, namespace: str, name: str) -> dict[str, Any]:
        """A Deployment (apps/v1) or HorizontalPodAutoscaler (autoscaling/v2), read only."""
        if kind == "Deployment":
            return await self._call(self._apps.read_namespaced_deployment, name, namespace)
        if kind == "HorizontalPodAutoscaler":
            read = self._autoscaling.read_namespaced_horizontal_pod_autoscaler
            return await self._call(read, name, namespace)
        raise ValueError(f"unknown workload kind {kind!r}")

    async def get_namespace(self, name: str) -> dict[str, Any]:
        return await self._call(self._core.read_namespace, name)

    async def token_review(self, token: str, audiences: Sequence[str]) -> dict[str, Any]:
        """The ``status`` of a TokenReview of ``token`` for ``audiences`` (authenticated, user, ...)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        return dict((await self._call(self._authn.create_token_review, body)).get("status") or {})

    async def subject_access_review(
        self,
        *,
        user: str,
        groups: Sequence[str],
        uid: str,
        extra: Mapping[str, Sequence[str]],
        verb: str,
        group: str,
        resource: str,
        namespace: str = "",
        name: str = "",
    ) -> dict[str, Any]:
        """The ``status`` of a SubjectAccessReview (allowed, denied, reason) for one resource verb."""
        attributes = {"verb": verb, "group": group, "resource": resource}
        if namespace:
            attributes["namespace"] = namespace
        if name:
            attributes["name"] = name
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": list(groups),
                "uid": uid,
                "extra": {k: list(v) for k, v in extra.items()},
                "resourceAttributes": attributes,
            },
        }
        return dict((await self._call(self._authz.create_subject_access_review, body)).get("status") or {})

    async def patch_node_metadata(
        self, name: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> dict[str, Any]:
        """JSON merge patch of the Node's labels/annotations: a value sets, None removes,
        keys not named are left alone. Nothing to change -> a plain get (no write)."""
        metadata: dict[str, Any] = {}
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        if not metadata:
            return await self.get("nodes", name)
        return await self._call(
            self._core.patch_node, name, {"metadata": metadata}, _content_type=MERGE_PATCH
        )

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str | None] = {},
        annotations: Mapping[str, str | None] = {},
    ) -> dict[str, Any]:
        """JSON merge patch of a Pod's labels/annotations (an agent's own Pod: docs/peers.md)."""
        metadata = {"labels": dict(labels), "annotations": dict(annotations)}
        return await self._call(
            self._core.patch_namespaced_pod,
            name,
            namespace,
            {"metadata": {k: v for k, v in metadata.items() if v}},
            _content_type=MERGE_PATCH,
        )

    async def create_distribution(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a ModelDistribution (``Conflict`` when the name is taken)."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, **body}
        return await self._call(self._custom.create_cluster_custom_object, GROUP, VERSION, PLURAL, body)

    async def delete_distribution(self, name: str) -> None:
        await self._call(self._custom.delete_cluster_custom_object, GROUP, VERSION, PLURAL, name)

    async def patch_distribution_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch on the ``/status`` subresource (None values remove keys)."""
        return await self._call(
            self._custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            PLURAL,
            name,
            {"status": status},
            _content_type=MERGE_PATCH,
        )

    # The admission webhook's own objects: its TLS Secret, its configuration's caBundle, Events.

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(self._core.read_namespaced_secret, name, namespace)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Secret (``Conflict`` when the name is taken: another replica was first)."""
        return await self._call(self._core.create_namespaced_secret, namespace, body)

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Update a Secret; ``Conflict`` when ``body``'s resourceVersion is stale."""
        return await self._call(self._core.replace_namespaced_secret, name, namespace, body)

    async def get_mutating_webhook(self, name: str) -> dict[str, Any]:
        """One MutatingWebhookConfiguration."""
        return await self._call(self._admission.read_mutating_webhook_configuration, name)

    async def json_patch_mutating_webhook(self, name: str, ops: Any) -> dict[str, Any]:
        """RFC 6902 patch (a list of operations) of a MutatingWebhookConfiguration; a failed
        ``test`` operation is a 422 ``KubeError``."""
        patch = self._admission.patch_mutating_webhook_configuration
        return await self._call(patch, name, ops, _content_type=JSON_PATCH)

    async def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self._core.create_namespaced_event, namespace, body)

    def watch(
        self,
        kind: Kind,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 240,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after ``resource_version`` (BOOKMARKs included); raises ``Gone`` on 410,
        ``KubeError`` on a broken stream; ends when the server closes the stream.
        Close it (``aclose``, or ``contextlib.aclosing``) to stop its reader thread at once."""
        fn, args = self._lister(kind)
        kwargs = {
            "label_selector": label_selector,
            "field_selector": field_selector,
            "resource_version": resource_version,
            "timeout_seconds": timeout_seconds,
            "allow_watch_bookmarks": True,
            "watch": True,
            "_preload_content": False,
            # The server ends the stream after timeout_seconds; the read timeout is a backstop.
            "_request_timeout": (self._timeout, timeout_seconds + max(self._timeout, 30.0)),
        }
        return self._stream(fn, args, kwargs, kind)

    async def _stream(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], kind: str
    ) -> AsyncGenerator[WatchEvent, None]:
        def open_stream() -> Any:
            try:
                return fn(*args, **kwargs)
            except _TRANSPORT_ERRORS as err:
                raise _from_library(err) from err

        opening = asyncio.ensure_future(asyncio.to_thread(open_stream))
        try:
            response = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)  # the thread still runs: close what it opens
            raise
        pump = _Pump(response, asyncio.get_running_loop())
        with self._lock:
            self._watches.add(response)
        thread = threading.Thread(target=pump.run, name=f"kube-watch-{kind}", daemon=True)
        thread.start()
        try:
            while True:
                item = await pump.queue.get()
                if item is None:
                    return
                if isinstance(item, KubeError):
                    raise item
                yield item
        finally:
            with self._lock:
                self._watches.discard(response)
            pump.stop()
            # prompt (stop() shut the socket down), but a join is a blocking call: off the loop
            await asyncio.to_thread(thread.join, 5.0)

    async def close(self) -> None:
        """Stop open watches and release the connection pool."""
        with self._lock:
            responses = list(self._watches)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()

        def close_client() -> None:
            self._api.close()
            self._api.rest_client.pool_manager.clear()

        await asyncio.to_thread(close_client)


def _close_opened(opening: asyncio.Future[Any]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(Exception):
            opening.result().close()
            opening.result().release_conn()


class _Pump:
    """Reads one watch response in a thread and feeds events into an asyncio queue.

    The queue receives ``WatchEvent``s, then ``None`` (clean end) or a ``KubeError``.
    """

    def __init__(self, response: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.response = response
        self.loop = loop
        self.queue: asyncio.Queue[WatchEvent | KubeError | None] = asyncio.Queue()
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):
            self.response.shutdown()  # unblocks a read in progress in the pump thread

    def _put(self, item: WatchEvent | KubeError | None) -> bool:
        return self._put_all([item])

    def _put_all(self, items: list[WatchEvent | KubeError | None]) -> bool:
        """Queue ``items`` with one wake-up of the loop (a chunk often holds dozens of events)."""
        if self.stopped.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self._deliver, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _deliver(self, items: list[WatchEvent | KubeError | None]) -> None:
        for item in items:
            self.queue.put_nowait(item)

    def run(self) -> None:
        try:
            self._put(self._read())
        except Exception as err:
            chained = _from_library(err)
            chained.__cause__ = err
            self._put(chained)
        finally:
            with contextlib.suppress(Exception):
                self.response.close()
                self.response.release_conn()

    def _read(self) -> KubeError | None:
        """Pump events until the stream ends (None) or carries an ERROR (its KubeError)."""
        buffer = b""
        for chunk in self.response.stream(65536, decode_content=False):
            lines = (buffer + chunk).split(b"\n")
            buffer = lines.pop()  # the part of a line still to come
            events: list[WatchEvent | KubeError | None] = []
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    code = obj.get("code") if isinstance(obj, dict) else None
                    self._put_all(events)
                    return _error(code, f"watch error {code}: {obj.get('message', obj)}")
                events.append(WatchEvent(str(event.get("type")), obj))
            if events and not self._put_all(events):
                return None
        return None
