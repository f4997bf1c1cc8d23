"""The cluster manifests validate against their schemas, and agree with the cluster preset.

- ``clusters/launcher/*.yaml`` against the cluster-launcher schema shipped inside Ray
  (``ray/autoscaler/ray-schema.json``).
- ``clusters/kuberay/*.yaml`` against the ``openAPIV3Schema`` of the KubeRay CRDs (vendored in
  ``clusters/schemas/``, KubeRay v1.7.0), which embed the Kubernetes pod template schema. Validation
  is strict: an object schema that lists its properties rejects unknown keys (the API server would
  silently prune them, so a misspelt ``maxReplica`` would otherwise pass and do nothing).
- The roles' node labels and GPUs in the manifests match ``configs/paper-cluster.yaml``.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from eopd_ray.config import RunConfig, load_config
from eopd_ray.eval.config import EvalConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
ROLE = "eopd-ray.io/role"
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever Kubernetes would prune."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(kind: str) -> jsonschema.Validator:
    name = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}[kind]
    schema = json.loads((CLUSTERS / "schemas" / f"ray.io_{name}.v1.json").read_text())
    schema.pop("$comment")
    return jsonschema.Draft7Validator(strict(schema))


def launcher_validator() -> jsonschema.Validator:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def errors(validator: jsonschema.Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


KUBERAY = sorted((CLUSTERS / "kuberay").glob("*.yaml"))
LAUNCHER = sorted((CLUSTERS / "launcher").glob("*.yaml"))


def test_manifests_exist() -> None:
    kinds = sorted(d["kind"] for p in KUBERAY for d in load_docs(p))
    assert kinds == ["RayCluster", "RayJob", "RayJob"]
    assert LAUNCHER


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_crd(path: Path) -> None:
    for doc in load_docs(path):
        assert doc["apiVersion"] == "ray.io/v1"
        assert DNS1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        assert errors(crd_validator(doc["kind"]), doc) == []


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_validates_against_ray_schema(path: Path) -> None:
    (doc,) = load_docs(path)
    assert errors(launcher_validator(), doc) == []
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    assert doc["max_workers"] >= sum(t.get("max_workers", 0) for t in types.values())
    for name, node in types.items():
        assert node.get("min_workers", 0) <= node.get("max_workers", 0) or name == "head"


def test_validation_catches_mistakes() -> None:
    """Mutations a user could make are rejected, so the tests above can fail."""
    (cluster,) = load_docs(CLUSTERS / "kuberay" / "raycluster-paper.yaml")
    validator = crd_validator("RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert any("maxReplica" in e for e in errors(validator, typo))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert errors(validator, wrong_type)
    bad_container = copy.deepcopy(cluster)
    del bad_container["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in e for e in errors(validator, bad_container))
    bad_quantity = copy.deepcopy(cluster)
    limits = bad_quantity["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    limits["resources"]["limits"]["memory"] = "48 gigs"
    assert errors(validator, bad_quantity)

    (launcher,) = load_docs(LAUNCHER[0])
    launcher["available_node_types"]["sampler"]["resources"]["GPU"] = 0.5  # must be integer
    assert errors(launcher_validator(), launcher)
    del launcher["provider"]
    assert any(
        "'provider' is a required property" in e for e in errors(launcher_validator(), launcher)
    )


def _groups() -> dict[str, dict[str, Any]]:
    (cluster,) = load_docs(CLUSTERS / "kuberay" / "raycluster-paper.yaml")
    return {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}


def _gpus(group: dict[str, Any]) -> int:
    (container,) = group["template"]["spec"]["containers"]
    return int(container["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_roles_in_the_preset_land_on_their_worker_groups() -> None:
    config = load_config(REPO / "configs" / "paper-cluster.yaml")
    groups = _groups()
    (launcher,) = load_docs(CLUSTERS / "launcher" / "aws-paper.yaml")
    node_types = launcher["available_node_types"]
    roles = {
        "sampler": (config.sampler.label_selector, config.sampler.num_gpus),
        "teacher": (config.teacher_service.label_selector, config.teacher_service.num_gpus),
        "learner": (config.learner.label_selector, None),
    }
    for role, (selector, gpus_per_actor) in roles.items():
        assert selector == {ROLE: role}
        assert groups[role]["labels"] == {ROLE: role}
        assert node_types[role]["labels"] == {ROLE: role}
        if gpus_per_actor:  # one actor (engine / replica) per GPU of its group
            assert _gpus(groups[role]) == node_types[role]["resources"]["GPU"] == gpus_per_actor
    # The learner group is packed onto the learner pod: all its GPUs, one worker each.
    assert config.learner.use_gpu
    assert config.learner.num_workers == _gpus(groups["learner"])
    assert config.learner.placement_strategy == "STRICT_PACK"
    # The pools' ranges fit their groups.
    assert config.sampler.max_actors <= groups["sampler"]["maxReplicas"]
    assert config.sampler.max_actors <= node_types["sampler"]["max_workers"]
    assert config.teacher_service.max_replicas <= groups["teacher"]["maxReplicas"]


def test_rayjobs_target_the_cluster_and_run_valid_configs() -> None:
    (cluster,) = load_docs(CLUSTERS / "kuberay" / "raycluster-paper.yaml")
    for path in (CLUSTERS / "kuberay").glob("rayjob-*.yaml"):
        (job,) = load_docs(path)
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:3] == ["python", "-m", "eopd_ray.cli"]
        kind, config_path = argv[3], argv[4]
        overrides = [a for a in argv[5:] if "=" in a and not a.startswith("-")]
        assert (REPO / config_path).is_file(), config_path
        model = EvalConfig if kind == "eval" else RunConfig
        config = load_config(REPO / config_path, overrides, model)
        assert config.output_dir.startswith("/mnt/runs/")  # the shared volume
        if kind == "eval":
            assert all(c.path.startswith("/mnt/runs/") for c in config.checkpoints)
            assert config.actors.label_selector == {ROLE: "eval"}
            assert config.actors.num_gpus == _gpus(_groups()["eval"])
