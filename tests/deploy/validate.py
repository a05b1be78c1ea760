#!/usr/bin/env python3
"""Schema validation of the deployment files, run by scripts/validate-deploy.sh.

No cluster and no Docker engine run on the build machines, so the files are checked against the
schemas those would apply:

* every Kubernetes object under deploy/k8s: the rendered output of each kustomization
  (`kubectl kustomize`) and every manifest file no kustomization draws on, against the
  Kubernetes API schemas of a pinned version (kubernetes-validate's strict schemas: an unknown
  field is an error, as with `kubectl apply --validate=strict`). Custom resources (KEDA,
  Prometheus Operator) are checked against the openAPIV3Schema of their CRDs, vendored under
  tests/deploy/crds, made strict the same way;
* docker-compose.yml against the Compose Specification's JSON schema
  (tests/deploy/compose-spec), and against what the code and the tests need: exact image
  versions, the NATS release the tests run, and the image built once. (The stop grace periods
  against each service's shutdown budget are checked in tests/tests/compose.rs, which asks the
  services' crates for their budgets.)

Then a self-test (`--no-self-test` skips it) runs the same checks on the broken files under
tests/deploy/fixtures, each of which names the errors it must produce (`# expect: <text>`); it fails if one is accepted or
rejected for anything else.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import importlib_resources
import jsonschema
import yaml
from referencing import Registry, Resource

# The Kubernetes version whose API schemas the manifests must satisfy: the oldest release the
# deployment supports, so a field newer than that is caught. kubernetes-validate ships it.
KUBERNETES_VERSION = os.environ.get("VALIDATE_K8S_VERSION", "1.32.0")

HERE = Path(__file__).resolve().parent
CRD_DIR = HERE / "crds"
COMPOSE_SCHEMA = HERE / "compose-spec" / "compose-spec.json"
FIXTURES = HERE / "fixtures"

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


@dataclass
class Report:
    """Errors by source (a file or a kustomization directory)."""

    errors: dict[str, list[str]] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)

    def check(self, source: str) -> None:
        self.checked[source] = self.checked.get(source, 0) + 1

    def error(self, source: str, message: str) -> None:
        self.errors.setdefault(source, []).append(message)

    def count(self) -> int:
        return sum(len(v) for v in self.errors.values())


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# Kubernetes: schemas


def _k8s_schema_dir() -> Any:
    base = importlib_resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    schema_dir = base.joinpath(f"v{KUBERNETES_VERSION}-local-strict")
    if not schema_dir.is_dir():
        raise SystemExit(
            f"kubernetes-validate has no schemas for Kubernetes {KUBERNETES_VERSION} "
            f"(VALIDATE_K8S_VERSION); it ships: "
            + ", ".join(sorted(p.name for p in base.iterdir() if p.name.endswith("-strict")))
        )
    return schema_dir


class Schemas:
    """The built-in API schemas of KUBERNETES_VERSION and the vendored CRDs' schemas."""

    def __init__(self) -> None:
        self.k8s_dir = _k8s_schema_dir()
        definitions = json.loads(self.k8s_dir.joinpath("_definitions.json").read_text())
        self.registry: Registry = Resource.from_contents(definitions) @ Registry()
        self.object_meta_ref = (
            definitions["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        )
        self.crds = self._load_crds()

    def _load_crds(self) -> dict[tuple[str, str], dict]:
        """(apiVersion, kind) -> strict JSON schema, for every served version of each CRD."""
        out: dict[tuple[str, str], dict] = {}
        for path in sorted(CRD_DIR.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served", False):
                        continue
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    schema = strict_crd_schema(schema)
                    props = schema.setdefault("properties", {})
                    api_version = f"{spec['group']}/{version['name']}"
                    props["apiVersion"] = {"type": "string", "enum": [api_version]}
                    props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
                    # The API server validates metadata as ObjectMeta whatever the CRD says
                    # (CRDs declare only `type: object`).
                    props["metadata"] = {"$ref": self.object_meta_ref}
                    schema["additionalProperties"] = False
                    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
                    out[(api_version, spec["names"]["kind"])] = schema
        return out

    def builtin(self, api_version: str, kind: str) -> dict | None:
        # kubernetes-validate's file naming: apps/v1 -> apps-v1, networking.k8s.io/v1 ->
        # networking-v1, v1 -> v1.
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        path = self.k8s_dir.joinpath(f"{kind.lower()}-{group_version}.json")
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def errors(self, obj: dict) -> list[str]:
        """Schema errors of one object ([] when it is valid)."""
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return ["not a Kubernetes object: apiVersion and kind must be strings"]
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        builtin_group = "." not in group or group.endswith(".k8s.io")
        schema = self.crds.get((api_version, kind))
        if schema is None and builtin_group:
            schema = self.builtin(api_version, kind)
        if schema is None:
            where = (
                f"Kubernetes {KUBERNETES_VERSION}"
                if builtin_group
                else "the vendored CRDs (tests/deploy/crds; add the CRD there)"
            )
            return [f"no schema for {kind} {api_version} in {where}"]
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        found = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        return [f"{json_path(e.absolute_path)}: {e.message}" for e in found]


def strict_crd_schema(node: Any) -> Any:
    """An openAPIV3Schema as the API server applies it, in JSON Schema terms: unknown fields
    are rejected (it prunes them, and `--validate=strict` reports them) unless the schema
    preserves them, and `nullable` admits null."""
    if isinstance(node, list):
        return [strict_crd_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {k: strict_crd_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict_crd_schema(value)
        else:
            out[key] = value
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def json_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text or "."


def object_name(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "?"
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


# ------------------------------------------------------------------------------------------------
# Kubernetes: which files, rendered how


def find_kustomization(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def kustomization_references(kfile: Path) -> tuple[set[Path], list[str]]:
    """The local files a kustomization draws on (following referenced kustomizations), and
    problems reading it."""
    covered: set[Path] = set()
    problems: list[str] = []
    seen: set[Path] = set()

    def visit(kfile: Path) -> None:
        if kfile in seen:
            return
        seen.add(kfile)
        base = kfile.parent
        try:
            doc = yaml.safe_load(kfile.read_text()) or {}
        except yaml.YAMLError as err:
            problems.append(f"{kfile}: {err}")
            return

        def local(entry: Any) -> None:
            if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
                return
            entry = entry.split("=", 1)[-1]  # configMapGenerator files: `key=path`
            target = (base / entry).resolve()
            if target.is_dir():
                nested = find_kustomization(target)
                if nested is not None:
                    visit(nested)
            elif target.is_file():
                covered.add(target)

        for key in ("resources", "bases", "components", "crds", "patchesStrategicMerge",
                    "generators", "transformers", "validators"):
            for entry in doc.get(key) or []:
                local(entry)
        for key in ("patches", "patchesJson6902", "replacements"):
            for entry in doc.get(key) or []:
                if isinstance(entry, dict):
                    local(entry.get("path"))
        for key in ("configMapGenerator", "secretGenerator"):
            for gen in doc.get(key) or []:
                for entry in (gen.get("files") or []) + (gen.get("envs") or []):
                    local(entry)
                local(gen.get("env"))
        if isinstance(doc.get("openapi"), dict):
            local(doc["openapi"].get("path"))

    visit(kfile)
    return covered, problems


def is_helm_values(path: Path) -> bool:
    """Helm values (input to a chart, not a manifest): values.yaml or values-*.yaml."""
    return path.name in ("values.yaml", "values.yml") or path.name.startswith("values-")


def kustomize(directory: Path) -> tuple[list[Any], str | None]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit(
            "validate-deploy: kubectl not found on PATH; it renders the kustomizations "
            "(`kubectl kustomize`). Install kubectl (1.27 or later) and re-run."
        )
    run = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        return [], f"kubectl kustomize failed: {run.stderr.strip()}"
    try:
        return [d for d in yaml.safe_load_all(run.stdout) if d is not None], None
    except yaml.YAMLError as err:
        return [], f"kustomize output is not YAML: {err}"


def check_k8s_tree(tree: Path, root: Path, schemas: Schemas, report: Report) -> None:
    if not tree.is_dir():
        report.error(rel(tree, root), "no such directory")
        return
    yaml_files = sorted(p for p in tree.rglob("*") if p.suffix in (".yaml", ".yml"))
    kfiles = [p for p in yaml_files if p.name in KUSTOMIZATION_NAMES]
    covered: set[Path] = set()
    for kfile in kfiles:
        refs, problems = kustomization_references(kfile)
        covered |= refs
        for problem in problems:
            report.error(rel(kfile.parent, root), problem)

    for kfile in kfiles:
        source = rel(kfile.parent, root)
        kind = (yaml.safe_load(kfile.read_text()) or {}).get("kind", "Kustomization")
        if kind == "Component":
            continue  # rendered only as part of the kustomizations that use it
        objects, failure = kustomize(kfile.parent)
        if failure:
            report.error(source, failure)
            continue
        if not objects:
            report.error(source, "renders no objects")
        for obj in objects:
            check_object(obj, source, schemas, report)

    for path in yaml_files:
        if path.name in KUSTOMIZATION_NAMES or path.resolve() in covered or is_helm_values(path):
            continue
        source = rel(path, root)
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as err:
            report.error(source, f"not YAML: {err}")
            continue
        if not docs:
            report.error(source, "holds no objects")
        for obj in docs:
            check_object(obj, source, schemas, report)


def check_object(obj: Any, source: str, schemas: Schemas, report: Report) -> None:
    report.check(source)
    if not isinstance(obj, dict):
        report.error(source, f"a document that is no mapping: {obj!r:.60}")
        return
    for message in schemas.errors(obj):
        report.error(source, f"{object_name(obj)}: {message}")


# ------------------------------------------------------------------------------------------------
# docker-compose.yml


def read_repo(root: Path, path: str) -> str:
    return (root / path).read_text()


def nats_current_version(root: Path) -> str:
    found = re.search(
        r'^current_version="\$\{NATS_SERVER_CURRENT_VERSION:-([^}]+)\}"',
        read_repo(root, "scripts/ensure-nats.sh"),
        re.M,
    )
    if found is None:
        raise LookupError("current_version not found in scripts/ensure-nats.sh; update validate.py")
    return found.group(1)


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    repo, tag = image, None
    if ":" in image.rsplit("/", 1)[-1]:
        repo, tag = image.rsplit(":", 1)
    return repo, tag, digest


EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+(?:[-+.][0-9A-Za-z.-]+)?$")


def check_compose(path: Path, root: Path, report: Report, require_nats: bool = True) -> None:
    source = rel(path, root)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        report.error(source, f"not YAML: {err}")
        return
    report.check(source)
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        report.error(source, f"compose schema: {json_path(err.absolute_path)}: {err.message}")
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return
    try:
        check_compose_runtime(doc["services"], root, source, report, require_nats)
    except LookupError as err:
        report.error(source, str(err))


def check_compose_runtime(
    services: dict, root: Path, source: str, report: Report, require_nats: bool
) -> None:
    # The image built here: one service builds it, the others run the tag without a lookup in a
    # registry (compose builds once per service with `build:`, merging none).
    builders = {n: s for n, s in services.items() if isinstance(s, dict) and "build" in s}
    if len(builders) != 1:
        report.error(
            source,
            f"the image must be built by one service, not {len(builders)} "
            f"({', '.join(sorted(builders)) or 'none'}): compose builds once per `build:` section",
        )
    built = {s.get("image") for s in builders.values()}
    for name, svc in builders.items():
        if not svc.get("image"):
            report.error(source, f"{name}: tag the built image (`image:`) so others can run it")

    nats_current = nats_current_version(root)
    nats_seen = False
    for name, svc in sorted(services.items()):
        if not isinstance(svc, dict):
            continue
        image = svc.get("image")
        if not isinstance(image, str):
            continue
        if name in builders:
            pass
        elif image in built:
            if svc.get("pull_policy") != "never":
                report.error(
                    source,
                    f"{name}: runs the image built by {', '.join(sorted(builders))}; set "
                    "`pull_policy: never` (it is in no registry)",
                )
        else:
            repo, tag, digest = image_parts(image)
            if digest is None and (tag is None or not EXACT_TAG.match(tag)):
                report.error(
                    source,
                    f"{name}: pin {image} to an exact version (`repo:X.Y.Z`, not latest or a "
                    "floating minor)",
                )
            if repo in ("nats", "library/nats", "docker.io/nats", "docker.io/library/nats"):
                nats_seen = True
                version = (tag or "").split("-", 1)[0]
                if version != nats_current:
                    report.error(
                        source,
                        f"{name}: {image} is not nats-server {nats_current}, the current release "
                        "the NATS integration tests run (scripts/ensure-nats.sh current_version)",
                    )
    if require_nats and not nats_seen:
        report.error(source, "no service runs the official nats image")


# ------------------------------------------------------------------------------------------------
# Running


def print_report(title: str, report: Report) -> None:
    checked = ", ".join(f"{source} {n}" for source, n in sorted(report.checked.items()))
    if not report.errors:
        print(f"ok   {title} (documents checked: {checked})")
        return
    print(f"     {title} (documents checked: {checked or 'none'})")
    print(f"FAIL {title}: {report.count()} error(s)")
    for source, messages in sorted(report.errors.items()):
        for message in messages:
            print(f"  {source}: {message}")


def expectations(path: Path) -> list[str]:
    files = [path] if path.is_file() else sorted(path.rglob("*.y*ml"))
    out = []
    for f in files:
        out += [m.strip() for m in re.findall(r"^# expect: (.+)$", f.read_text(), re.M)]
    return out


def self_test(root: Path, schemas: Schemas) -> bool:
    """Each fixture must be rejected with exactly the errors it names."""
    ok = True
    cases: list[tuple[Path, Report]] = []
    k8s = FIXTURES / "k8s"
    for case in sorted(k8s.iterdir()):
        report = Report()
        # A case is a directory tree (discovery, kustomize) or a single manifest file.
        if case.is_dir():
            check_k8s_tree(case, root, schemas, report)
        else:
            for obj in yaml.safe_load_all(case.read_text()):
                if obj is not None:
                    check_object(obj, rel(case, root), schemas, report)
        cases.append((case, report))
    for case in sorted((FIXTURES / "compose").iterdir()):
        report = Report()
        check_compose(case, root, report, require_nats=False)
        cases.append((case, report))
    for case, report in cases:
        wanted = expectations(case)
        got = [m for ms in report.errors.values() for m in ms]
        name = rel(case, root)
        if not wanted:
            print(f"FAIL self-test {name}: names no `# expect:` error")
            ok = False
            continue
        missing = [w for w in wanted if not any(w in m for m in got)]
        # Any other error would mean the case fails for a reason it does not test (discovery
        # validating a Helm values file, say).
        unexpected = [m for m in got if not any(w in m for w in wanted)]
        if missing or unexpected:
            ok = False
            print(f"FAIL self-test {name}: missing {missing}, unexpected {unexpected}")
        else:
            print(f"ok   self-test {name} rejected: {'; '.join(wanted)}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent.parent, help="repository root")
    parser.add_argument("--no-self-test", action="store_true", help="skip the fixture run")
    args = parser.parse_args()
    root = args.root.resolve()
    schemas = Schemas()
    print(
        f"Kubernetes {KUBERNETES_VERSION} schemas (kubernetes-validate); CRDs: "
        + ", ".join(f"{k} {v}" for v, k in sorted(schemas.crds))
    )

    failed = False
    k8s = Report()
    check_k8s_tree(root / "deploy" / "k8s", root, schemas, k8s)
    print_report("deploy/k8s", k8s)
    compose = Report()
    check_compose(root / "docker-compose.yml", root, compose)
    print_report("docker-compose.yml", compose)
    failed = bool(k8s.errors or compose.errors)
    if not args.no_self_test and not self_test(root, schemas):
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
