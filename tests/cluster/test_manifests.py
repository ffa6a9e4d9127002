"""cluster/ manifests and their checker (mlops_ray/manifests.py): every shipped manifest validates
against its schema (KubeRay v1 CRDs, Ray's ray-schema.json) and the controller-only rules; each
rule has a failing example whose message is asserted. No Ray is started."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from mlops_ray.cluster import manifests as m
from mlops_ray.errors import ConfigError, ExitCode

pytestmark = [pytest.mark.unit]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SHIPPED = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def doc_of(name: str) -> dict:
    return m.load_documents(CLUSTER / name)[0]


def problems(doc: dict, file: str = "x.yaml") -> list[m.Problem]:
    return m.check_document(doc, file=file, root=ROOT)


def messages(doc: dict) -> list[str]:
    return [str(p) for p in problems(doc)]


def one(doc: dict, path: str) -> str:
    """The message of the single problem at ``path`` (and there is exactly one problem)."""
    found = problems(doc)
    assert [p.path for p in found] == [path], [str(p) for p in found]
    return found[0].message


# --------------------------------------------------------------------------- shipped files
def test_cluster_folder_has_the_three_ways():
    names = {str(p.relative_to(CLUSTER)) for p in SHIPPED}
    assert {"ray-cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml"} <= names
    assert (CLUSTER / "local-cluster.sh").stat().st_mode & 0o111, "local-cluster.sh must be executable"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_shipped_manifest_validates(path):
    docs, found = m.check_file(path, root=ROOT)
    assert found == [], "\n".join(map(str, found))
    assert docs


def test_ray_cluster_yaml_against_the_schema_rays_wheel_ships():
    import jsonschema
    schema_path = Path(m.importlib.util.find_spec("ray").submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    assert schema_path.is_file()
    jsonschema.validate(yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text()), json.loads(schema_path.read_text()))


def test_ray_cluster_yaml_installs_the_package_and_uses_a_shared_store():
    doc = doc_of("ray-cluster.yaml")
    assert any("pip install" in c and "mlops-ray" in c for c in doc["setup_commands"])
    assert doc["head_node_type"] in doc["available_node_types"]
    for t in doc["available_node_types"].values():
        assert t["resources"], "each node type states its resources"
    text = (CLUSTER / "ray-cluster.yaml").read_text()
    assert "s3://" in text and "auth_token" in str(doc["file_mounts"])


def test_rayjob_runs_the_pipeline_and_rayservice_has_serve_builds_shape():
    job = doc_of("kuberay/rayjob.yaml")
    assert job["spec"]["entrypoint"].startswith("mlops-ray run configs/quickstart.yaml")
    assert "ray.address=auto" in job["spec"]["entrypoint"]
    svc = yaml.safe_load(doc_of("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])
    # the keys `mlops-ray serve build` writes (serve/control.py::build)
    assert set(svc) == {"proxy_location", "http_options", "applications"}
    app = svc["applications"][0]
    assert app["import_path"] == m.SERVE_IMPORT_PATH and app["route_prefix"] == "/"
    assert set(app["args"]) == {"config"} and app["deployments"][0]["name"] == "predictor"
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml"):
        spec = m.cluster_spec(doc_of(name))[1]
        assert spec["authOptions"] == {"mode": "token", "secretName": "mlops-ray-token"}
        assert spec["rayVersion"] == "2.60.0"
        for _, _, g in m.groups(doc_of(name)):
            assert g["template"]["spec"]["containers"][0]["image"] == "rayproject/ray:2.60.0-py311"


PROXY_ROUTING = "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml"])
def test_kuberay_ray_containers_let_serves_proxy_use_every_nodes_replicas(name):
    # on by default, Serve's proxy sends every request to a replica on its own node (docs/architecture.md, Serving)
    found = list(m.groups(doc_of(name)))
    assert [g for _, g, _ in found][0] == "headgroup" and len(found) >= 2
    for path, _, g in found:
        for c in g["template"]["spec"]["containers"]:
            assert {"name": PROXY_ROUTING, "value": "0"} in (c.get("env") or []), f"{name}: {path} {c['name']}"


def test_launcher_and_local_cluster_nodes_let_serves_proxy_use_every_nodes_replicas():
    assert f"--env {PROXY_ROUTING}=0" in doc_of("ray-cluster.yaml")["docker"]["run_options"]
    script = (CLUSTER / "local-cluster.sh").read_text()
    ray_env = script.split("\nray_env=(", 1)[1].split("\n\n", 1)[0]     # every node starts with it
    assert f"{PROXY_ROUTING}=0" in ray_env.split()


def test_shipped_manifests_hold_no_secret():
    for path in SHIPPED:
        for doc in m.load_documents(path):
            assert doc.get("kind") != "Secret" and m.rule_secrets(doc) == [], path


# --------------------------------------------------------------------------- schema
def test_unknown_field_is_named_with_a_guess():
    doc = doc_of("kuberay/rayjob.yaml")
    doc["spec"]["shutdownAfterJobFinish"] = True
    assert one(doc, "spec.shutdownAfterJobFinish") == \
        "unknown field (the schema does not have it); did you mean 'shutdownAfterJobFinishes'?"


def test_wrong_type_is_a_schema_problem():
    doc = doc_of("kuberay/raycluster.yaml")
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert "'two' is not of type 'integer'" in one(doc, "spec.workerGroupSpecs[0].replicas")


def test_wrong_api_version_and_unknown_kind():
    doc = doc_of("kuberay/raycluster.yaml")
    doc["apiVersion"] = "ray.io/v1alpha1"
    assert "write apiVersion: ray.io/v1" in one(doc, "apiVersion")
    msg = one({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}, "kind")
    assert "'Deployment' is not a kind this checker knows" in msg


# --------------------------------------------------------------------------- controller-only rules
def test_rayjob_with_both_cluster_spec_and_selector():
    doc = doc_of("kuberay/rayjob.yaml")
    doc["spec"]["clusterSelector"] = {"ray.io/cluster": "mlops-ray"}
    assert one(doc, "spec.clusterSelector").startswith(
        "is set and so is spec.rayClusterSpec; KubeRay then submits the job to the selected cluster and "
        "ignores rayClusterSpec. Keep one")


def test_rayjob_with_neither_cluster_spec_nor_selector():
    doc = doc_of("kuberay/rayjob.yaml")
    del doc["spec"]["rayClusterSpec"]
    assert "neither rayClusterSpec nor clusterSelector is set" in one(doc, "spec")


def test_rayjob_selector_without_cluster_name():
    doc = doc_of("kuberay/rayjob.yaml")
    del doc["spec"]["rayClusterSpec"]
    doc["spec"]["clusterSelector"] = {"app": "x"}
    assert "clusterSelector: {ray.io/cluster: NAME}" in one(doc, "spec.clusterSelector")


@pytest.mark.parametrize("value, written", [(0, '"0"'), (True, '"true"'), (1.5, '"1.5"')])
def test_ray_start_params_must_be_strings(value, written):
    doc = doc_of("kuberay/raycluster.yaml")
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = value
    msg = one(doc, "spec.headGroupSpec.rayStartParams.num-cpus")      # the schema's own error is replaced
    assert msg == (f"is {value!r} ({type(value).__name__}); every rayStartParams value must be a string (KubeRay "
                   f"turns them into `ray start --num-cpus=...` flags): write num-cpus: {written}")


def test_ray_start_params_in_a_worker_group_of_a_rayservice():
    doc = doc_of("kuberay/rayservice.yaml")
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 1
    assert "write num-gpus: \"1\"" in one(doc, "spec.rayClusterConfig.workerGroupSpecs[0].rayStartParams.num-gpus")


def test_group_resources_in_both_places():
    doc = doc_of("kuberay/raycluster.yaml")
    doc["spec"]["headGroupSpec"]["resources"] = {"CPU": "1"}
    assert one(doc, "spec.headGroupSpec.resources") == (
        "group headgroup sets resources both here and in rayStartParams (num-cpus); KubeRay rejects that: "
        "use only one")


def test_token_auth_needs_a_recent_ray_version():
    doc = doc_of("kuberay/raycluster.yaml")
    doc["spec"]["rayVersion"] = "2.50.0"
    assert "token auth needs Ray >= 2.52.0" in one(doc, "spec.rayVersion")
    del doc["spec"]["rayVersion"]
    assert "rayVersion is missing" in one(doc, "spec.rayVersion")


def test_serve_config_v2_must_be_yaml():
    doc = doc_of("kuberay/rayservice.yaml")
    doc["spec"]["serveConfigV2"] = "applications:\n  - name: a\n   import_path: x"
    assert one(doc, "spec.serveConfigV2").startswith("is not valid YAML at line")


def test_serve_config_v2_must_be_a_string_not_a_mapping():
    doc = doc_of("kuberay/rayservice.yaml")
    doc["spec"]["serveConfigV2"] = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert "must be a string holding the Serve config YAML" in one(doc, "spec.serveConfigV2")


def test_serve_config_v2_is_validated_as_serve_deploy_schema():
    doc = doc_of("kuberay/rayservice.yaml")
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    serve["applications"][0]["deployments"][0]["num_replicas"] = "two"
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert one(doc, "spec.serveConfigV2.applications[0].deployments[0]") == (
        '`num_replicas` must be an int or "auto", but got: two (Ray Serve\'s ServeDeploySchema; `serve build` '
        'writes a valid one)')


def test_serve_config_v2_args_config_is_a_pipeline_config():
    doc = doc_of("kuberay/rayservice.yaml")
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    serve["applications"][0]["args"]["config"]["serve"]["replicas"] = 2
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    msg = one(doc, "spec.serveConfigV2.applications[0].args.config")
    assert msg.startswith("is not a valid pipeline config:") and "serve.replicas: unknown key" in msg


def test_runtime_env_yaml_must_be_a_mapping():
    doc = doc_of("kuberay/rayjob.yaml")
    doc["spec"]["runtimeEnvYAML"] = "- pip"
    assert one(doc, "spec.runtimeEnvYAML") == "must hold a mapping (pip:, working_dir:, env_vars:, ...)"


# --------------------------------------------------------------------------- ray up rules
def test_launcher_head_node_type_must_be_a_node_type():
    doc = doc_of("ray-cluster.yaml")
    doc["head_node_type"] = "ray.head.default"
    assert one(doc, "head_node_type") == \
        "is 'ray.head.default', which is not one of available_node_types (head, cpu_worker)"


def test_launcher_schema_problem():
    doc = doc_of("ray-cluster.yaml")
    doc["available_node_types"]["cpu_worker"]["resources"]["CPU"] = "8"
    assert "'8' is not of type 'integer'" in one(doc, "available_node_types.cpu_worker.resources.CPU")


def test_launcher_min_workers_above_max_workers():
    doc = doc_of("ray-cluster.yaml")
    doc["available_node_types"]["cpu_worker"]["min_workers"] = 4
    doc["max_workers"] = 3
    found = {p.path: p.message for p in problems(doc)}
    assert found["max_workers"] == "is 3 but the node types' min_workers add up to 4; raise max_workers or lower min_workers"


# --------------------------------------------------------------------------- project rules
def test_missing_config_file_is_a_config_error_naming_manifest_field_file_and_fix(tmp_path):
    bad = tmp_path / "rayjob.yaml"
    bad.write_text((CLUSTER / "kuberay" / "rayjob.yaml").read_text().replace(
        "mlops-ray run configs/quickstart.yaml", "mlops-ray run configs/quickstart-typo.yaml"))
    with pytest.raises(ConfigError) as info:
        m.check_files([str(bad)], root=ROOT)
    assert info.value.exit_code == ExitCode.CONFIG == 2
    assert info.value.message == (
        f"1 problem in the manifests:\n  {bad}: spec.entrypoint: references 'configs/quickstart-typo.yaml', which "
        f"does not exist under the project root {ROOT} (looked for {ROOT / 'configs/quickstart-typo.yaml'}). Fix "
        f"the path in {bad}, or add the file to the project (e.g. start from configs/quickstart.yaml) so the "
        f"cluster's working_dir or image carries it")


def test_missing_config_file_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from mlops_ray.cli import app
    bad = tmp_path / "rayjob.yaml"
    bad.write_text((CLUSTER / "kuberay" / "rayjob.yaml").read_text().replace("configs/quickstart.yaml",
                                                                             "configs/missing.yaml"))
    res = CliRunner().invoke(app, ["cluster", "check", str(bad), "--root", str(ROOT)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "Invalid configuration: 1 problem in the manifests:" in text
    assert f"{bad}: spec.entrypoint: references 'configs/missing.yaml', which does not exist" in text
    ok = CliRunner().invoke(app, ["cluster", "check", str(CLUSTER / "kuberay" / "rayjob.yaml"), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["files"][0]["documents"] == ["RayJob 'mlops-ray-pipeline'"]


def test_config_references_found_in_commands_and_file_mounts_but_not_urls_or_image_paths():
    doc = {"cluster_name": "c", "provider": {"type": "aws"},
           "setup_commands": ["mlops-ray run --set x=1 configs/a.yaml", "cat /etc/ray/b.yaml ~/c.yaml $HOME/d.yaml",
                              "curl https://example.com/e.yaml", "serve deploy --config=./f.yml"],
           "file_mounts": {"/remote/configs": "./configs-missing", "/remote/t": "~/.ray/auth_token"}}
    assert sorted(ref for _, ref in m.config_refs(doc)) == ["./configs-missing", "./f.yml", "configs/a.yaml"]
    found = {p.path: p.message for p in problems(doc)}
    assert set(found) == {"setup_commands[0]", "setup_commands[3]", 'file_mounts."/remote/configs"'}


def test_missing_file_mount_source():
    doc = doc_of("ray-cluster.yaml")
    doc["file_mounts"]["/home/ray/mlops-ray/configs"] = "./conf"
    assert "references './conf', which does not exist" in one(doc, 'file_mounts."/home/ray/mlops-ray/configs"')


def test_inline_secrets_are_refused():
    doc = doc_of("kuberay/raycluster.yaml")
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "RAY_AUTH_TOKEN", "value": "abc123"},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}]
    msg = one(doc, "spec.headGroupSpec.template.spec.containers[0].env[0].value")
    assert msg.startswith("RAY_AUTH_TOKEN is set inline; reference a Secret instead")
    job = doc_of("kuberay/rayjob.yaml")
    job["spec"]["runtimeEnvYAML"] += "env_vars:\n  MLFLOW_TRACKING_PASSWORD: hunter2\n  RAY_AUTH_TOKEN_PATH: /t\n"
    assert "a secret in a runtime_env is stored in the GCS" in one(
        job, "spec.runtimeEnvYAML.env_vars.MLFLOW_TRACKING_PASSWORD")    # a token's path is fine
    launcher = doc_of("ray-cluster.yaml")
    launcher["setup_commands"].append("export RAY_AUTH_TOKEN=0123abcd")
    assert "sets RAY_AUTH_TOKEN to a literal" in one(launcher, "setup_commands[2]")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "stringData": {"auth_token": "x"}}
    assert "kubectl create secret generic" in one(secret, "stringData")


def test_runtime_env_secret_is_refused():
    doc = {"kind": "RayJob", "apiVersion": "ray.io/v1", "spec": {"runtime_env": {"env_vars": {"API_KEY": "k"}}}}
    found = {p.path: p.message for p in m.check_document(copy.deepcopy(doc), file="x", root=ROOT)
             if "env_vars" in p.path}
    assert "a secret in a runtime_env is stored in the GCS" in found["spec.runtime_env.env_vars.API_KEY"]


# --------------------------------------------------------------------------- files
def test_multi_document_file_and_bad_yaml(tmp_path):
    f = tmp_path / "two.yaml"
    job = doc_of("kuberay/rayjob.yaml")
    cluster = doc_of("kuberay/raycluster.yaml")
    cluster["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 4
    f.write_text(yaml.safe_dump_all([job, cluster]))
    docs, found = m.check_file(f, root=ROOT)
    assert docs == ["RayJob 'mlops-ray-pipeline'", "RayCluster 'mlops-ray'"]
    assert [str(p).split(": ")[0:2] for p in found] == [
        [f"{f} (document 2)", "spec.workerGroupSpecs[0].rayStartParams.num-cpus"]]
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: RayJob\nspec: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 3"):
        m.load_documents(broken)
    with pytest.raises(ConfigError, match=r"manifest .*nope.yaml' does not exist"):
        m.load_documents(tmp_path / "nope.yaml")


def test_missing_crds_say_where_to_get_them(tmp_path):
    with pytest.raises(ConfigError, match=r"ray.io_rayjobs.yaml \(or ray.io_rayjobs.yaml.gz\) is not in .*--crds"):
        m.crd_schema("RayJob", str(tmp_path))


def test_strict_schema_keeps_preserve_unknown_fields_open():
    s = m.strict({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}},
                                                         "x-kubernetes-preserve-unknown-fields": True}}})
    assert s["additionalProperties"] is False and "additionalProperties" not in s["properties"]["a"]
