"""The cluster configurations in cluster/ are checked, not just written: the Ray launcher YAMLs
against the schema and the offline config checks of the installed Ray (what `ray up` runs
before it calls a cloud), the KubeRay manifests against KubeRay's CRD schemas (strict, as
`kubectl apply` validates fields), the Dockerfile against pyproject's Ray pin, the Slurm
script's shell, and every file against binding a service to 0.0.0.0 without auth. Each check
is also shown to reject a broken copy, so it can fail."""

from __future__ import annotations

import copy
import json
import lzma
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY_CRDS = SHARED / "reference" / "kuberay"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MOUNT = "/mnt/hpsearch"  # the shared volume / file system in every config


def _yaml(path: Path):
    return yaml.load(path.read_text(), Loader=Loader)


def _ray_pin() -> str:
    """The Ray the tests passed with (cluster/constraints.txt), which pyproject's range must
    admit: the version every cluster image and launcher config runs."""
    from packaging.requirements import Requirement

    m = re.search(r"^ray==([0-9.]+)$", (CLUSTER / "constraints.txt").read_text(), re.M)
    assert m, "cluster/constraints.txt pins no ray version"
    text = (ROOT / "pyproject.toml").read_text()
    spec = re.search(r'"(ray\[[^"]*)"', text)
    assert spec, "pyproject.toml does not depend on ray"
    assert Requirement(spec.group(1)).specifier.contains(m.group(1)), (spec.group(1),
                                                                        m.group(1))
    return m.group(1)


def _bash_syntax(cmd: str) -> str:
    r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
    return r.stderr.strip() if r.returncode else ""


# ------------------------------------------------------------------ Ray cluster launcher
LAUNCHERS = {"aws": CLUSTER / "ray-aws-gpu.yaml", "gcp": CLUSTER / "ray-gcp-gpu.yaml"}
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _launcher_errors(cfg: dict) -> list[str]:
    """What `ray up` would refuse before any cloud call: the wheel's JSON schema, then Ray's
    own defaults merge and checks (prepare_config + validate_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(_ray_schema()).iter_errors(cfg)]
    if errors:
        return errors
    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except (ValueError, RuntimeError, jsonschema.ValidationError) as e:
        return [str(e)]
    return []


@pytest.mark.parametrize("cloud", sorted(LAUNCHERS))
def test_ray_launcher_config_passes_rays_own_validation(cloud):
    cfg = _yaml(LAUNCHERS[cloud])
    assert _launcher_errors(cfg) == []
    assert cfg["provider"]["type"] == cloud
    workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert 0 < gpu["min_workers"] <= gpu["max_workers"] <= cfg["max_workers"]
    if cloud == "aws":  # resources autodetected from the instance type: a GPU family
        assert re.match(r"(g|p)\d", gpu["node_config"]["InstanceType"])
    else:
        assert gpu["resources"]["GPU"] >= 1
        assert gpu["node_config"]["guestAccelerators"][0]["acceleratorCount"] >= 1
        assert gpu["node_config"]["scheduling"] == [{"onHostMaintenance": "TERMINATE"}]


@pytest.mark.parametrize("cloud", sorted(LAUNCHERS))
def test_ray_launcher_commands_install_hpsearch_with_token_auth_and_shared_storage(cloud):
    cfg = _yaml(LAUNCHERS[cloud])
    commands = [c for k in COMMAND_KEYS for c in cfg.get(k, [])]
    assert [(c, err) for c in commands if (err := _bash_syntax(c))] == []
    setup = " ".join(cfg["setup_commands"])
    assert cfg["file_mounts"]["~/hpsearch"] == "."  # this checkout, installed on every node
    assert "pip install" in setup and "-e ~/hpsearch" in setup
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "~/.hpsearch/cluster.env" in cfg["file_mounts"]
    assert "chmod 600 ~/.ray/auth_token ~/.hpsearch/cluster.env" in cfg["setup_commands"]
    assert "mount -t nfs" in setup and MOUNT in setup and "HPSEARCH_NFS" in setup
    assert ".venv" in cfg["rsync_exclude"] and "results" in cfg["rsync_exclude"]
    head_start = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    worker_start = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert head_start and worker_start
    for c in head_start + worker_start:
        assert "RAY_AUTH_MODE=token" in c
    assert all("--dashboard-host=127.0.0.1" in c for c in head_start)
    # the MLflow URI and credentials reach the head's shells (the driver) from the env file
    assert any("cluster.env" in c for c in cfg["head_setup_commands"])
    env_example = (CLUSTER / "cluster.env.example").read_text()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "HPSEARCH_NFS"):
        assert re.search(rf"^{var}=", env_example, re.M)
    assert re.search(r"^MLFLOW_TRACKING_PASSWORD=$", env_example, re.M)  # no secret shipped


@pytest.mark.parametrize("break_it,expect", [
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="one"),
     "is not of type 'integer'"),
    (lambda c: c.update(max_worker=4), "Additional properties are not allowed"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9),
     "smaller than the sum of `min_workers`"),
    (lambda c: c.update(head_node_type="ray.head.default"), "must be one of"),
], ids=["gpu-not-int", "unknown-key", "min-over-max", "bad-head-type"])
def test_ray_launcher_validation_rejects_a_broken_config(break_it, expect):
    cfg = _yaml(LAUNCHERS["gcp"])
    break_it(cfg)
    errors = _launcher_errors(cfg)
    assert errors and any(expect in e for e in errors), errors
    assert _bash_syntax('echo "unterminated') != ""  # and the shell check can fail too


# ------------------------------------------------------------------ KubeRay
def _strict(schema):
    """A CRD's structural schema as JSON Schema, applied the way the API server does with
    strict field validation (kubectl's default): an unknown field is an error (the CRD leaves
    ``additionalProperties`` out and lets the server prune), ``x-kubernetes-int-or-string``
    takes an integer or a string, ``nullable`` takes null. CEL rules
    (``x-kubernetes-validations``) are not evaluated; the manifests use none of the fields
    that carry them (managedBy, deletionStrategy, gcsFaultToleranceOptions)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: ({n: _strict(s) for n, s in v.items()} if k == "properties" else _strict(v))
           for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators():
    if not KUBERAY_CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found ({KUBERAY_CRDS}; ../shared is absent)")
    out = {}
    for kind, name in (("RayCluster", "rayclusters"), ("RayJob", "rayjobs")):
        with lzma.open(KUBERAY_CRDS / f"ray.io_{name}.yaml.xz", "rt") as f:
            crd = yaml.load(f, Loader=Loader)
        assert crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        out[kind] = jsonschema.Draft7Validator(_strict(v1["schema"]["openAPIV3Schema"]))
    return out


def _crd_errors(validators, doc: dict) -> list[str]:
    errs = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validators[doc["kind"]].iter_errors(doc)]
    if doc.get("apiVersion") != "ray.io/v1":
        errs.append(f"apiVersion {doc.get('apiVersion')!r} is not ray.io/v1")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc.get("metadata", {}).get("name", "")):
        errs.append("metadata.name is not a DNS label")
    return errs


RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.stem)
def test_kuberay_manifest_matches_the_crd_schema(crd_validators, path):
    assert _crd_errors(crd_validators, _yaml(path)) == []


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _containers(doc: dict):
    spec = _cluster_spec(doc)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_cluster_has_gpu_workers_shared_storage_and_secrets():
    rc, job = _yaml(RAYCLUSTER), _yaml(RAYJOB)
    assert job["spec"]["rayClusterSpec"] == rc["spec"]  # one cluster definition, not two
    assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": "hpsearch-ray-token"}
    pvc = _yaml(CLUSTER / "kuberay" / "storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == [
        "ReadWriteMany"]
    images = set()
    for group, pod in _containers(rc):
        (c,) = pod["containers"]
        images.add(c["image"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert claims[mounts[MOUNT]] == pvc["metadata"]["name"], group
        env = _env(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token", group
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "hpsearch-ray-token", "key": "auth_token"}, group
        if group == "head":  # the driver: MLflow URI and credentials from a Secret
            for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD"):
                assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "hpsearch-mlflow"
            assert c["resources"]["limits"].get("nvidia.com/gpu") is None
        else:
            assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
            assert "MLFLOW_TRACKING_PASSWORD" not in env  # workers never talk to MLflow
    scaler_env = {e["name"]: e for e in rc["spec"]["autoscalerOptions"]["env"]}
    assert scaler_env["RAY_AUTH_MODE"]["value"] == "token"
    assert "secretKeyRef" in scaler_env["RAY_AUTH_TOKEN"]["valueFrom"]
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # the job: a search through --address, its results (Tune's storage_path) on the volume
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["hpsearch", "search"] and argv[argv.index("--address") + 1] == "auto"
    assert argv[argv.index("--results-dir") + 1].startswith(MOUNT + "/")
    assert argv[argv.index("--tracking-uri") + 1] == "$MLFLOW_TRACKING_URI"
    (sub,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    env = _env(sub)
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env[
        "RAY_AUTH_TOKEN"]["valueFrom"]
    assert "MLFLOW_TRACKING_PASSWORD" not in env
    images.add(sub["image"])
    assert len(images) == 1
    # no secret value written into any manifest
    for path in (RAYCLUSTER, RAYJOB, CLUSTER / "kuberay" / "storage.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            text = json.dumps(doc)
            assert not re.search(r'"name": "[A-Z_]*(PASSWORD|TOKEN|SECRET)[A-Z_]*", "value"',
                                 text), path


@pytest.mark.parametrize("break_it,expect", [
    (lambda s: s["workerGroupSpecs"][0].update(replicas="two"), "is not of type 'integer'"),
    (lambda s: s["workerGroupSpecs"][0].update(maxReplica=4), "Additional properties"),
    (lambda s: s["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"].update({"nvidia.com/gpu": [1]}), "is not valid under any of the given"),
    (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
     "is not of type 'string'"),
    (lambda s: s["authOptions"].update(mode="password"), "is not one of"),
], ids=["replicas-str", "typo-key", "no-group-name", "gpu-list", "start-param-int",
        "auth-mode"])
def test_kuberay_validation_rejects_a_broken_manifest(crd_validators, break_it, expect):
    for path in (RAYCLUSTER, RAYJOB):
        doc = _yaml(path)
        break_it(_cluster_spec(doc))
        errors = _crd_errors(crd_validators, doc)
        assert any(expect in e for e in errors), errors


def test_kuberay_validation_rejects_a_broken_rayjob(crd_validators):
    job = _yaml(RAYJOB)
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"][1]["valueFrom"] = {
        "secretRef": {"name": "hpsearch-ray-token"}}
    errors = _crd_errors(crd_validators, job)
    assert any("'yes' is not of type 'boolean'" in e for e in errors), errors
    assert any("'secretRef' was unexpected" in e for e in errors), errors


# ------------------------------------------------------------------ Dockerfile
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, cur = [], ""
    for raw in (CLUSTER / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        cur += raw.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.strip():
            word, _, rest = cur.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        cur = ""
    return lines


def test_dockerfile_installs_this_package_on_the_pinned_ray_as_non_root():
    ins = _dockerfile()
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    assert args["RAY_VERSION"] == _ray_pin()
    (base,) = [a for i, a in ins if i == "FROM"]
    assert base.startswith("rayproject/ray:${RAY_VERSION}-") and base.endswith("-gpu")
    copies = [a for i, a in ins if i == "COPY"]
    sources = [s for a in copies for s in shlex.split(a) if not s.startswith("--")]
    copied = {s for a in copies for s in shlex.split(a)[:-1] if not s.startswith("--")}
    assert {"pyproject.toml", "hpsearch"} <= copied
    assert all((ROOT / s).exists() for s in copied), sources
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "pip install ." in runs and "ray.__version__ == '${RAY_VERSION}'" in runs
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    # nothing secret baked in: no credential variables, no token or env files copied
    for i, a in ins:
        if i in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|TOKEN|SECRET|CREDENTIAL", a, re.I), a
    assert not re.search(r"auth_token|\.env\b|credentials", " ".join(copies))
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:] and all(f"!{s}" in ignore or f"!{s}/" in ignore
                                                  for s in copied)


# ------------------------------------------------------------------ Slurm
SBATCH = CLUSTER / "slurm" / "hpsearch.sbatch"


def test_sbatch_script_parses_and_runs_ray_with_a_job_token_on_loopback():
    text = SBATCH.read_text()
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    node = re.search(r"^ray_node='\n(.*?)^'$", text, re.S | re.M).group(1)
    assert _bash_syntax(node) == ""
    assert "export RAY_AUTH_MODE=token" in text and "export RAY_AUTH_TOKEN_PATH=" in text
    assert "umask 077" in text and "unset RAY_AUTH_TOKEN" in text
    assert "--dashboard-host=127.0.0.1" in text and "0.0.0.0" not in text
    assert re.search(r"^#SBATCH --gpus-per-task=\d+", text, re.M)
    assert 'hpsearch search "$space" --address "$address"' in text
    assert "trap cleanup EXIT" in text and 'scancel --signal=TERM "$SLURM_JOB_ID"' in text


def test_sbatch_script_outside_an_allocation_says_how_to_run_it(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("usage: sbatch cluster/slurm/hpsearch.sbatch")
    r = subprocess.run(["bash", str(SBATCH), "space.yaml"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode != 0 and "run this script with sbatch" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written before the allocation is there


# ------------------------------------------------------------------ secure by default
ANY_HOST = re.compile(r"0\.0\.0\.0")


def _logical_lines(text: str) -> list[str]:
    """Lines with shell continuations (``\\`` at the end) and YAML folded blocks joined."""
    out, cur = [], ""
    for line in text.splitlines():
        cur += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def exposure_problems(text: str) -> list[str]:
    """Each binding to every interface that the same file does not put behind auth: an
    ``mlflow server`` / ``mlflow ui`` needs ``--app-name basic-auth`` in its command, anything
    else (Ray's dashboard, GCS) Ray token auth in the file (RAY_AUTH_MODE=token, KubeRay's
    ``mode: token``)."""
    ray_auth = "RAY_AUTH_MODE=token" in text or re.search(
        r"RAY_AUTH_MODE\W+value\W+token|^\s*mode: token", text, re.M)
    problems = []
    for line in _logical_lines(text):
        if not ANY_HOST.search(line):
            continue
        if re.search(r"mlflow\s+(server|ui)\b", line):
            if "--app-name basic-auth" not in line:
                problems.append(f"MLflow on 0.0.0.0 without --app-name basic-auth: {line}")
        elif not ray_auth:
            problems.append(f"0.0.0.0 without Ray token auth in the file: {line.strip()}")
    return problems


def test_exposure_check_catches_open_bindings():
    assert exposure_problems("mlflow server --host 0.0.0.0 --port 5000")
    assert exposure_problems("mlflow server \\\n  --host 0.0.0.0")
    assert exposure_problems("mlflow ui --host 0.0.0.0\nRAY_AUTH_MODE=token")
    assert exposure_problems("ray start --head --dashboard-host 0.0.0.0")
    assert not exposure_problems("mlflow server --app-name basic-auth --host 0.0.0.0")
    assert not exposure_problems("RAY_AUTH_MODE=token ray start --head --dashboard-host 0.0.0.0")


def test_nothing_in_cluster_or_readme_binds_to_every_interface_without_auth():
    files = [p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix != ".pyc"]
    files += [ROOT / "README.md"]
    assert len(files) > 8
    problems = {str(p.relative_to(ROOT)): exposure_problems(p.read_text(errors="replace"))
                for p in files}
    assert {k: v for k, v in problems.items() if v} == {}
