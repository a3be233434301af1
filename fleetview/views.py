"""The three cluster views: what each reads (one snapshot), how it renders, how ``--watch`` follows.

A snapshot is Nodes, pods (for pins; a refusal is a warning, not a failure) and ModelDistributions
(missing CRD or RBAC: a warning). ``--watch`` then follows Nodes (models, nodes) or
ModelDistributions and prints only rows that changed, as ``kubectl get -w`` does; pins keep the
pods of the snapshot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from fleetview import render
from fleetview import rows as core
from locality.cli import CliError
from locality.contract import mapping
from locality.identity import InvalidURI, ModelRef, model_ref
from locality.kube import Gone, Kind, Kube, KubeError, NotFound

Obj = dict[str, Any]
Pins = Mapping[tuple[str, str], tuple[str, ...]]
Printed = dict[tuple[str, ...], tuple[str, ...]]  # row key -> the cells last printed for it


@dataclass
class Snapshot:
    nodes: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    distributions: list[Obj] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resource_version: str = ""  # of the list the view watches

    def pins(self) -> Pins:
        return core.pins_of(self.pods, self.distributions)


@dataclass(frozen=True)
class View:
    kind: str  # models | nodes | distributions
    fmt: str | None  # None (table), wide, json, yaml
    namespace: str | None
    select: tuple[str, ...] = ()

    @classmethod
    def of(cls, args: argparse.Namespace) -> View:
        if args.view == "models":
            select = (args.model,) if args.model else ()
        elif args.view == "nodes":
            select = tuple(args.node)
        else:
            select = (args.name,) if args.name else ()
        return cls(args.view, args.output, args.namespace, _normalise(args.view, select))

    @property
    def wide(self) -> bool:
        return self.fmt == "wide"

    def rows(self, snap: Snapshot) -> list[Any]:
        """The view's rows from a snapshot, filtered and sorted."""
        if self.kind == "distributions":
            found = [core.distribution_row(d) for d in snap.distributions]
            chosen = (r for r in found if not self.select or r.name in self.select)
            return sorted(chosen, key=lambda r: r.name)
        pins = snap.pins()
        if self.kind == "nodes":
            found_nodes = [core.node_row(n, pins) for n in snap.nodes]
            return sorted((r for r in found_nodes if self._node_wanted(r.node)), key=lambda r: r.node)
        found_models = [m for n in snap.nodes for m in core.model_rows(n, pins) if self._model_wanted(m)]
        return sorted(found_models, key=lambda r: (r.uri, r.model_id, r.node))

    def _node_wanted(self, name: str) -> bool:
        return not self.select or name in self.select

    def _model_wanted(self, row: core.ModelRow) -> bool:
        # a label-only row knows 8 hex digits of its id: a full id selects it by that prefix
        return not self.select or any(
            row.model_id.startswith(s) or s.startswith(row.model_id) for s in self.select
        )

    def columns(self, now: dt.datetime) -> list[render.Column]:
        if self.kind == "models":
            return render.MODEL_COLUMNS
        return render.NODE_COLUMNS if self.kind == "nodes" else render.distribution_columns(now)

    def render(self, snap: Snapshot, now: dt.datetime) -> tuple[str, Printed]:
        """The first output, and the cells printed per row (for ``--watch``)."""
        found = self.rows(snap)
        if self.fmt in ("json", "yaml"):
            kind = {"models": "Model", "nodes": "Node", "distributions": "Distribution"}[self.kind]
            return render.document(kind, found, self.fmt), {}
        text = render.tabulate(self.columns(now), found, wide=self.wide) if found else ""
        return text, {_key(r): render.cells(self.columns(now), r, wide=self.wide) for r in found}


def _key(row: Any) -> tuple[str, ...]:
    if isinstance(row, core.ModelRow):
        return (row.node, row.model_id)
    return (row.node,) if isinstance(row, core.NodeRow) else (row.name,)


def _normalise(kind: str, select: tuple[str, ...]) -> tuple[str, ...]:
    """A URI given to ``models`` selects by its normalised form (ids are taken as prefixes)."""
    if kind != "models":
        return select
    out = []
    for s in select:
        try:
            out.append(model_ref(s).id if "://" in s else s.lower())
        except InvalidURI as exc:
            raise CliError(f"not a model URI: {exc}") from None
    return tuple(out)


async def read(kube: Kube, view: View) -> Snapshot:
    """List what the view needs; a refused or missing optional source becomes a warning."""
    snap = Snapshot()
    if view.kind == "distributions":
        snap.distributions, snap.resource_version = await _list_named(kube, "modeldistributions")
        return snap
    try:
        snap.nodes, snap.resource_version = await kube.list("nodes")
    except KubeError as exc:
        raise KubeError(f"cannot list nodes: {exc}") from None
    try:
        snap.pods, _ = await kube.list("pods", namespace=view.namespace)
    except KubeError as exc:
        snap.warnings.append(f"pins of pods not shown (cannot list pods: {exc})")
    try:
        snap.distributions, _ = await kube.list("modeldistributions")
    except KubeError as exc:
        snap.warnings.append(f"pins of ModelDistributions not shown ({exc})")
    return snap


async def _list_named(kube: Kube, kind: Kind) -> tuple[list[Obj], str]:
    try:
        return await kube.list(kind)
    except NotFound:
        crd = "manifests/crd-modeldistributions.yaml"
        raise KubeError(f"the ModelDistribution CRD is not installed ({crd})") from None


async def follow(kube: Kube, view: View, snap: Snapshot, printed: Printed, out: TextIO) -> None:
    """Watch the view's kind and print each row whose line changed; runs until cancelled."""
    kind: Kind = "modeldistributions" if view.kind == "distributions" else "nodes"
    objects = {_name(o): o for o in (snap.distributions if kind == "modeldistributions" else snap.nodes)}
    version = snap.resource_version
    while True:
        try:
            async with contextlib.aclosing(kube.watch(kind, resource_version=version)) as events:
                async for event in events:
                    version = str(mapping(event.object.get("metadata")).get("resourceVersion") or version)
                    if event.type == "BOOKMARK":
                        continue
                    if event.type == "DELETED":
                        objects.pop(_name(event.object), None)
                    else:
                        objects[_name(event.object)] = event.object
                    _emit(view, _with(snap, kind, objects), printed, out)
        except Gone:  # compacted: list again, print what changed meanwhile
            items, version = await kube.list(kind)
            objects = {_name(o): o for o in items}
            _emit(view, _with(snap, kind, objects), printed, out)


def _with(snap: Snapshot, kind: Kind, objects: Mapping[str, Obj]) -> Snapshot:
    if kind == "modeldistributions":
        return dataclasses.replace(snap, distributions=list(objects.values()))
    return dataclasses.replace(snap, nodes=list(objects.values()))


def _emit(view: View, snap: Snapshot, printed: Printed, out: TextIO) -> None:
    """Print the rows whose cells differ from those printed last, then the rows now gone."""
    found = view.rows(snap)
    columns = view.columns(_now())
    keys = {_key(r) for r in found}
    changed: list[tuple[str, ...]] = []
    for row in found:
        now_cells = render.cells(columns, row, wide=view.wide)
        if printed.get(_key(row)) != now_cells:
            printed[_key(row)] = now_cells
            changed.append(now_cells)
    changed += [(*printed.pop(key), "(gone)") for key in [k for k in printed if k not in keys]]
    if changed:
        width = max(len(c) for c in changed)
        out.write(render.table([""] * width, [(*c, *[""] * (width - len(c))) for c in changed], header=False))
        out.flush()


def _name(obj: Obj) -> str:
    return str(mapping(obj.get("metadata")).get("name") or "")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def render_ids(refs: Sequence[ModelRef], fmt: str | None) -> str:
    if fmt in ("json", "yaml"):
        return render.document("ModelId", refs, fmt)
    return render.tabulate(render.ID_COLUMNS, refs, wide=fmt == "wide")
