"""The docs' commands and manifests match the code, read as a new user would copy them.

Every fenced ``sh``/``yaml`` block and every inline command of README.md, docs/ and the other
READMEs (tests/fixtures/docblocks.py; a new doc is checked without a change here): our CLIs'
commands parse with the real argparse, ``kubectl logs/exec -c`` names a container the install
runs or the webhook injects, paths exist, ``MODEL_LOCALITY_*`` names exist in the code, YAML
parses and is something kubectl or the webhook takes. tests/integration/test_docs_realkube.py runs
the same blocks against a real API server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler_extender.injection import INJECTED_ANNOTATION, Install, inject, wait_name
from tests.fixtures import docblocks as db
from tests.fixtures.kustomize import load_all, render

ROOT = db.ROOT
MANIFESTS = ROOT / "manifests"
PARSERS = {
    "model-agent": "agent.cli",
    "model-extender": "scheduler_extender.cli",
    "model-serve": "serving.cli",
}
CODE_DIRS = ("agent", "scheduler_extender", "serving", "locality", "manifests", "scripts", "docker")
TOP_DIRS = ("manifests/", "docs/", "scripts/", "bench/", "tests/", "docker/", "agent/", "locality/",
            "scheduler_extender/", "serving/", "examples/", "components/")  # fmt: skip
# Words a reader replaces (placeholders) -> a value argparse takes in their place.
PLACEHOLDERS = {"ID": "b1b39b0c6e8b5743", "URI": "s3://models/a/b", "FILE": "/tmp/f", "REV": "abcdef1"}


def docs() -> list[Path]:
    found = db.doc_files()
    assert {ROOT / "README.md", MANIFESTS / "README.md"} <= set(found)
    return found


def all_blocks() -> Iterator[db.Block]:
    for path in docs():
        yield from db.blocks(path)


def shell_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every simple command of every command block."""
    for path in docs():
        for block in db.command_blocks(path):
            for argv in db.simple_commands(block.text):
                yield block.where, argv


def inline(path: Path) -> Iterator[tuple[str, list[str]]]:
    for line, span in db.inline_commands(path):
        yield f"{path.relative_to(ROOT)}:{line}", span.split()


# ---------------------------------------------------------------- the extractor (table rows)

EXTRACT_ROWS = {
    "continuation and comment": (
        "kubectl get x \\\n  -o yaml   # why",
        [["kubectl", "get", "x", "-o", "yaml"]],
    ),
    "and-chain": ("a b && c d", [["a", "b"], ["c", "d"]]),
    "pipe and background": ("a | b &", [["a"], ["b"]]),
    "substitution": ("T=$(kubectl create token x)", [["kubectl", "create", "token", "x"]]),
    "heredoc body is data": (
        "cat > f <<'EOF'\nresources: [x]\nEOF\nkubectl apply -k .",
        [["cat"], ["kubectl", "apply", "-k", "."]],
    ),
    "env assignment": ("export A=1 B=2\nA=1 model-agent ls", [["model-agent", "ls"]]),
}  # fmt: skip


@pytest.mark.parametrize("row", EXTRACT_ROWS, ids=list(EXTRACT_ROWS))
def test_simple_commands(row: str) -> None:
    script, expected = EXTRACT_ROWS[row]
    assert db.simple_commands(script) == expected


def test_marked_blocks_are_skipped_and_bare_fences_are_not_commands(tmp_path: Path) -> None:
    (tmp_path / "d.md").write_text(
        "```sh\nkubectl get a\n```\n\n<!-- not-a-command -->\n\n```sh\nkubectl get b\n```\n"
        "```\nkubectl get c\n```\n  ```yaml\n  a: 1\n  ```\n"
    )
    found = db.blocks(tmp_path / "d.md", tmp_path)
    assert [(b.lang, b.text, b.illustrative) for b in found] == [
        ("sh", "kubectl get a", False),
        ("sh", "kubectl get b", True),
        ("", "kubectl get c", False),
        ("yaml", "a: 1", False),
    ]
    assert [b.text for b in db.command_blocks(tmp_path / "d.md", tmp_path)] == ["kubectl get a"]


YAML_KIND_ROWS = {
    "object": ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}, "object"),
    "overlay": ({"resources": ["../manifests"], "components": []}, "kustomization"),
    "patches only": ({"patches": [{"patch": "x"}]}, "kustomization"),
    "pod fragment": ({"metadata": {"annotations": {}}, "spec": {"containers": []}}, "pod"),
    "pod spec fields": ({"volumes": []}, "podspec"),
    "anything else": ({"foo": 1}, "unknown"),
}


@pytest.mark.parametrize("row", YAML_KIND_ROWS, ids=list(YAML_KIND_ROWS))
def test_yaml_kind(row: str) -> None:
    doc, kind = YAML_KIND_ROWS[row]
    assert db.yaml_kind(doc) == kind


def test_docs_have_commands_to_check() -> None:
    """The extractor finds the install, not nothing (a broken regex must not pass every check)."""
    commands = [" ".join(argv) for _, argv in shell_commands()]
    assert any(c.startswith("kubectl apply -k manifests/") for c in commands)
    assert any(c.startswith("model-agent fetch") or ".venv/bin/model-agent fetch" in c for c in commands)
    assert sum(1 for b in all_blocks() if b.lang in db.YAML_LANGS) >= 5


# ---------------------------------------------------------------- our CLIs


def parser_of(name: str) -> argparse.ArgumentParser:
    import importlib

    parser: argparse.ArgumentParser = importlib.import_module(PARSERS[name]).build_parser()
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def parse_error(name: str, argv: list[str]) -> str | None:
    """None when ``name argv`` parses, else argparse's message."""
    words = [PLACEHOLDERS.get(w, w) for w in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser_of(name).parse_args(words)
        except SystemExit as exc:
            if exc.code != 0:  # --help / --version exit 0
                return err.getvalue().strip().splitlines()[-1] if err.getvalue() else f"exit {exc.code}"
    return None


def mention_error(name: str, argv: list[str]) -> str | None:
    """For prose spans (`model-agent wait URI`, `model-agent fetch/rm/gc`): the verb exists and
    every ``--flag`` is one of that verb's (or the program's) options."""
    parser = parser_of(name)
    verbs = _subparsers(parser)
    chosen = parser
    if argv and not argv[0].startswith("-") and verbs:
        missing = [v for v in argv[0].split("/") if v not in verbs]
        if missing:
            return f"{name} has no verb {'/'.join(missing)} (has {', '.join(sorted(verbs))})"
        chosen = verbs[argv[0].split("/")[0]]
    known = _options(parser) | _options(chosen)
    bad = [w.split("=", 1)[0] for w in argv if w.startswith("--") and w.split("=", 1)[0] not in known]
    return f"{name} {argv[0] if argv else ''}: unknown {bad}" if bad else None


def test_our_commands_in_blocks_parse_with_the_real_argparse() -> None:
    problems = []
    checked = 0
    for where, argv in shell_commands():
        name = db.program(argv)
        if name in PARSERS:
            checked += 1
            error = parse_error(name, argv[1:])
            if error:
                problems.append(f"{where}: {' '.join(argv)}: {error}")
    assert checked >= 3 and not problems, "\n".join(problems)


def test_our_commands_mentioned_inline_exist_with_those_flags() -> None:
    problems = []
    for path in docs():
        for where, argv in inline(path):
            name = db.program(argv)
            if name in PARSERS:
                error = mention_error(name, argv[1:])
                if error:
                    problems.append(f"{where}: `{' '.join(argv)}`: {error}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- kubectl -c, paths, names


@pytest.fixture(scope="module")
def containers() -> set[str]:
    """Every container the install runs (base, examples, components) or the webhook injects."""
    if shutil.which("kubectl") is None:
        pytest.skip("component patches need real kustomize")
    names = {wait_name(i) for i in range(8)}
    objs = render(MANIFESTS) + render(MANIFESTS / "examples")
    for comp in sorted((MANIFESTS / "components").iterdir()):
        objs += [
            o for p in comp.glob("*.yaml") if p.name != "kustomization.yaml" for o in load_all(p.read_text())
        ]
    for obj in (o for o in objs if isinstance(o, dict)):  # (JSON6902 patch files are lists)
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        names |= {c.get("name") for key in ("containers", "initContainers") for c in spec.get(key) or []}
    return names


def container_flag(argv: list[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == "--":
            return None
        if word in ("-c", "--container") and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--container="):
            return word.split("=", 1)[1]
    return None


def kubectl_commands() -> Iterator[tuple[str, list[str]]]:
    yield from ((w, a) for w, a in shell_commands() if db.program(a) == "kubectl")
    for path in docs():
        yield from ((w, a) for w, a in inline(path) if a[0] == "kubectl")


def test_kubectl_container_names_exist(containers: set[str]) -> None:
    problems, checked = [], 0
    for where, argv in kubectl_commands():
        name = container_flag(argv)
        if name is not None:
            checked += 1
            if name not in containers:
                problems.append(
                    f"{where}: `{' '.join(argv)}`: no container {name!r} (have {sorted(containers)})"
                )
    assert checked >= 1 and not problems, "\n".join(problems)


def test_our_commands_run_through_kubectl_exec_parse() -> None:
    problems = []
    for where, argv in kubectl_commands():
        if "exec" in argv and "--" in argv:
            inner = argv[argv.index("--") + 1 :]
            name = db.program(inner)
            if name in PARSERS and (error := mention_error(name, inner[1:])):
                problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)


def _path_words(path: Path) -> Iterator[tuple[str, str]]:
    """(where, word) of words that name a file of this repository: command arguments, and inline
    code spans that are paths."""
    for block in db.command_blocks(path):
        for argv in db.simple_commands(block.text):
            for word in argv[1:]:
                for part in word.split("=", 1)[-1].split(","):
                    yield block.where, part
    for n, line in enumerate(path.read_text().splitlines(), 1):
        for span in re.findall(r"`([^`\s]+)`", line):
            yield f"{path.relative_to(ROOT)}:{n}", span


def test_paths_the_docs_name_exist() -> None:
    problems, checked = [], 0
    for path in docs():
        for where, word in _path_words(path):
            clean = word.rstrip(".,:;)")
            if not clean.startswith(TOP_DIRS) or any(c in clean for c in "<>*$?{"):
                continue
            checked += 1
            bases = (ROOT, path.parent, MANIFESTS)
            if not any((base / clean).exists() for base in bases):
                problems.append(f"{where}: {clean} does not exist")
    assert checked >= 10 and not problems, "\n".join(sorted(set(problems)))


def _code_text() -> str:
    parts = []
    for top in CODE_DIRS:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".sh", ".Dockerfile", ""):
                with contextlib.suppress(UnicodeDecodeError):
                    parts.append(path.read_text(encoding="utf-8"))
    return "\n".join(parts)


def test_model_locality_settings_named_in_docs_exist_in_code() -> None:
    code = _code_text()
    problems = []
    for path in docs():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name, wildcard in re.findall(r"\b(MODEL_LOCALITY_[A-Z0-9_]*[A-Z0-9])(_?\*)?", line):
                if name not in code:
                    problems.append(f"{path.relative_to(ROOT)}:{n}: {name}{wildcard} is nowhere in the code")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- YAML


def yaml_docs() -> Iterator[tuple[str, Any]]:
    for path in docs():
        for block in db.yaml_blocks(path):
            for doc in load_all(block.text):  # StrictLoader: duplicate keys fail too
                yield block.where, doc


def test_yaml_blocks_are_something_kubectl_or_the_webhook_takes() -> None:
    unknown = [f"{where}: {sorted(doc) if isinstance(doc, dict) else doc!r}" for where, doc in yaml_docs()
               if db.yaml_kind(doc) == "unknown"]  # fmt: skip
    assert not unknown, "mark illustrative blocks with " + db.MARKER + ":\n" + "\n".join(unknown)


def test_pod_fragments_are_just_the_annotation_and_containers() -> None:
    """What the docs tell users to write is the opt-in, never the fields the webhook adds; and the
    webhook (its pure core) mutates it without a warning."""
    checked = 0
    for where, doc in yaml_docs():
        if db.yaml_kind(doc) != "pod" or "model-locality.io/models" not in str(doc.get("metadata")):
            continue
        checked += 1
        spec = doc.get("spec") or {}
        written = set(spec) & {"schedulerName", "initContainers"}
        volumes = [str(v.get("name", "")) for v in spec.get("volumes") or []]
        ours = [name for name in volumes if name.startswith("model-")]  # the webhook's volume names
        assert not written and not ours, f"{where}: writes {written or ours}, which the webhook adds"
        pod = {"metadata": doc["metadata"], "spec": {"containers": [{"name": "x"}], **spec}}
        outcome = inject(pod, Install(), {})
        assert outcome.mutated and not outcome.warnings, f"{where}: {outcome.warnings}"
        assert any(op["path"].endswith(INJECTED_ANNOTATION.replace("/", "~1")) for op in outcome.patch)
    assert checked >= 2


def test_kustomization_fragments_render(tmp_path: Path) -> None:
    """Each overlay fragment, in a directory beside manifests/ (as `my-cluster/`), renders."""
    if shutil.which("kubectl") is None:
        pytest.skip("component patches need real kustomize")
    import yaml

    rendered = 0
    for i, (where, doc) in enumerate(yaml_docs()):
        if db.yaml_kind(doc) != "kustomization":
            continue
        overlay = tmp_path / f"o{i}" / "my-cluster"
        overlay.mkdir(parents=True)
        os.symlink(MANIFESTS, overlay.parent / "manifests")
        body = {"resources": ["../manifests"], **doc}
        for gen in body.get("secretGenerator", []):
            for item in gen.get("files", []):
                (overlay / item.split("=", 1)[-1]).write_text("0123456789abcdef0123456789abcdef")
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(body))
        try:
            render(overlay)
        except RuntimeError as exc:
            pytest.fail(f"{where}: {exc}")
        rendered += 1
    assert rendered >= 3



def test_paths_on_nodes_and_in_pods_are_the_ones_the_code_uses() -> None:
    """`/var/lib/model-locality/models/<id>/`, the token path, the Secret mounts: as the code and
    manifests write them (up to the first placeholder or model id; a file may be named by its
    directory)."""
    code = _code_text()
    problems, checked = [], 0
    for path in docs():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for found in re.findall(r"(?:/var/lib|/var/run/secrets|/etc)/model-locality[^\s`'\",)]*", line):
                known = re.split(r"[<*{}]|/ID\b|\.\.\.|/[0-9a-f]{16}", found)[0].rstrip("/.")
                checked += 1
                if known not in code and known.rsplit("/", 1)[0] not in code:
                    problems.append(f"{path.relative_to(ROOT)}:{n}: {found} is not a path the code uses")
    assert checked >= 5 and not problems, "\n".join(problems)
