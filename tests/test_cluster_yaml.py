"""Offline checks of the Ray cluster launcher config (cluster.yaml).

Nothing here talks to AWS or starts Ray: validation goes through the same
``prepare_config`` + ``validate_config`` pair that ``ray up`` runs before it
touches the cloud provider, which only reads the bundled defaults and
ray-schema.json.
"""

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"

# Node type -> exact resources the scheduler relies on.
EXPECTED_RESOURCES = {
    "head": {"CPU": 8},
    "cpu_worker": {"CPU": 16, "cpu_pool": 16},
    "gpu_7b": {"CPU": 4, "GPU": 1, "llm_7b": 1},
    "gpu_70b": {"CPU": 96, "GPU": 8, "llm_70b": 2},
}
CUSTOM_RESOURCES = ("cpu_pool", "llm_7b", "llm_70b")

# Published vCPU / GPU counts, to catch declared resources the hardware lacks.
INSTANCE_HARDWARE = {
    "m6i.2xlarge": {"CPU": 8, "GPU": 0},
    "c6i.4xlarge": {"CPU": 16, "GPU": 0},
    "g6e.xlarge": {"CPU": 4, "GPU": 1},
    "p4de.24xlarge": {"CPU": 96, "GPU": 8},
}
TP_70B = 4  # tensor-parallel degree of one 70B replica

WORLD = {"0.0.0.0/0", "::/0"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@pytest.fixture(scope="module")
def raw():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def prepared(raw):
    # The form `ray up` validates: user config merged over the AWS defaults.
    return prepare_config(copy.deepcopy(raw))


# --------------------------------------------------------------------------
# helpers


def _segments(command):
    """Split a shell command line into simple commands."""
    return [s.strip() for s in re.split(r"&&|\|\||[;|\n]", command) if s.strip()]


def ray_start_without_token_mode(command):
    """Return the `ray start` segments of `command` lacking RAY_AUTH_MODE=token.

    The variable has to be an assignment prefix of the very same simple
    command, so it reaches the ray processes whatever the shell profile says.
    """
    offending = []
    for segment in _segments(command):
        tokens = shlex.split(segment)
        for i in range(len(tokens) - 1):
            if tokens[i] == "ray" and tokens[i + 1] == "start":
                prefix = tokens[:i]
                if not (
                    all(ASSIGNMENT.match(t) for t in prefix)
                    and "RAY_AUTH_MODE=token" in prefix
                ):
                    offending.append(segment)
                break
    return offending


def ray_start_args(command):
    """Arguments after `ray start` in a command line, or None."""
    for segment in _segments(command):
        tokens = shlex.split(segment)
        for i in range(len(tokens) - 1):
            if tokens[i] == "ray" and tokens[i + 1] == "start":
                return tokens[i + 2 :]
    return None


def option_value(args, name):
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def world_open_non_ssh(ip_permissions):
    """Rules that open anything other than tcp/22 to the whole internet."""
    bad = []
    for rule in ip_permissions:
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if not cidrs & WORLD:
            continue
        is_ssh = (
            str(rule.get("IpProtocol")) == "tcp"
            and rule.get("FromPort") == 22
            and rule.get("ToPort") == 22
        )
        if not is_ssh:
            bad.append(rule)
    return bad


def effective_setup_commands(prepared, node_type):
    """Setup commands the launcher actually runs on a node of this type."""
    if node_type == prepared["head_node_type"]:
        return prepared["head_setup_commands"]
    # A node-type list replaces the merged global setup + worker setup list.
    node = prepared["available_node_types"][node_type]
    return node.get("worker_setup_commands", prepared["worker_setup_commands"])


# --------------------------------------------------------------------------
# Ray's own validation


def test_passes_rays_validation(prepared):
    validate_config(prepared)  # raises on any schema or consistency error


def test_ray_validation_is_not_a_no_op(raw):
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_7b"]["resource"] = {"GPU": 1}  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_provider_and_names(raw):
    assert raw["cluster_name"] == "raysched"
    assert raw["provider"]["type"] == "aws"
    assert raw["provider"]["region"] == "us-west-2"
    assert raw["head_node_type"] == "head"
    assert set(raw["available_node_types"]) == set(EXPECTED_RESOURCES)


# --------------------------------------------------------------------------
# resources and sizes


def test_node_type_resources(raw):
    for name, expected in EXPECTED_RESOURCES.items():
        assert raw["available_node_types"][name]["resources"] == expected, name


def test_each_custom_resource_lives_on_one_node_type(raw):
    for resource in CUSTOM_RESOURCES:
        holders = [
            name
            for name, node in raw["available_node_types"].items()
            if resource in node["resources"]
        ]
        assert len(holders) == 1, (resource, holders)


def test_declared_resources_fit_the_hardware(raw):
    for name, node in raw["available_node_types"].items():
        hw = INSTANCE_HARDWARE[node["node_config"]["InstanceType"]]
        assert node["resources"].get("CPU", 0) <= hw["CPU"], name
        assert node["resources"].get("GPU", 0) == hw["GPU"], name
    gpu_7b = raw["available_node_types"]["gpu_7b"]["resources"]
    assert gpu_7b["llm_7b"] * 1 <= gpu_7b["GPU"]
    gpu_70b = raw["available_node_types"]["gpu_70b"]["resources"]
    assert gpu_70b["llm_70b"] * TP_70B <= gpu_70b["GPU"]


def test_worker_bounds(raw, prepared):
    nodes = raw["available_node_types"]
    assert (nodes["cpu_worker"]["min_workers"], nodes["cpu_worker"]["max_workers"]) == (1, 8)
    assert (nodes["gpu_7b"]["min_workers"], nodes["gpu_7b"]["max_workers"]) == (0, 8)
    assert (nodes["gpu_70b"]["min_workers"], nodes["gpu_70b"]["max_workers"]) == (0, 2)
    # The global cap (default 2) must not undercut the per-type maxima.
    per_type = sum(
        n.get("max_workers", 0)
        for name, n in prepared["available_node_types"].items()
        if name != prepared["head_node_type"]
    )
    assert prepared["max_workers"] >= per_type


# --------------------------------------------------------------------------
# installation


def test_project_is_mounted_and_installed_on_every_node(raw, prepared):
    assert raw["file_mounts"]["~/raysched"] == "."
    for name in raw["available_node_types"]:
        joined = "\n".join(effective_setup_commands(prepared, name))
        # Editable install of the mounted checkout ($HOME, since "~" does not
        # expand inside quotes).
        assert re.search(r'pip install[^\n]*\s-e\s+"\$HOME/raysched', joined), name
        assert 'ray[default]==' in joined, name
        gpu = raw["available_node_types"][name]["resources"].get("GPU", 0) > 0
        assert ("raysched[vllm]" in joined) == gpu, name


# --------------------------------------------------------------------------
# token authentication


def test_every_ray_start_sets_token_mode(raw):
    commands = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    starts = [c for c in commands if ray_start_args(c) is not None]
    assert any(
        "--head" in (ray_start_args(c) or []) for c in raw["head_start_ray_commands"]
    )
    assert any(ray_start_args(c) is not None for c in raw["worker_start_ray_commands"])
    assert len(starts) >= 2
    for command in commands:
        assert ray_start_without_token_mode(command) == [], command


def test_token_mode_checker_catches_missing_prefix():
    assert ray_start_without_token_mode("ulimit -n 65536; ray start --head")
    assert ray_start_without_token_mode("RAY_AUTH_MODE=disabled ray start --head")
    assert ray_start_without_token_mode("export RAY_AUTH_MODE=token; ray start")
    assert not ray_start_without_token_mode("RAY_AUTH_MODE=token ray start --head")


def test_token_reaches_nodes_as_file_not_literal(raw, prepared):
    # The token ships as the default token file; no literal token in commands.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    every_command = yaml.safe_dump(raw)
    assert "RAY_AUTH_TOKEN=" not in every_command
    for name in raw["available_node_types"]:
        joined = "\n".join(effective_setup_commands(prepared, name))
        assert "chmod 600 ~/.ray/auth_token" in joined, name
        assert "export RAY_AUTH_MODE=token" in joined, name


# --------------------------------------------------------------------------
# network exposure


def test_head_dashboard_binds_localhost(raw):
    head_starts = [
        ray_start_args(c)
        for c in raw["head_start_ray_commands"]
        if ray_start_args(c) is not None
    ]
    assert head_starts, "no ray start in head_start_ray_commands"
    for args in head_starts:
        assert option_value(args, "--dashboard-host") == "127.0.0.1"
    for command in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        assert "0.0.0.0" not in command


def test_no_port_open_to_the_world_except_ssh(raw):
    security_group = raw["provider"]["security_group"]
    assert security_group["GroupName"]
    assert world_open_non_ssh(security_group.get("IpPermissions", [])) == []
    # User-supplied groups would bypass the group checked above.
    for name, node in raw["available_node_types"].items():
        assert "SecurityGroupIds" not in node["node_config"], name
        assert "NetworkInterfaces" not in node["node_config"], name


def test_open_port_checker_catches_world_rules():
    dashboard = {
        "IpProtocol": "tcp",
        "FromPort": 8265,
        "ToPort": 8265,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
    }
    everything_v6 = {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    ssh_world = {
        "IpProtocol": "tcp",
        "FromPort": 22,
        "ToPort": 22,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
    }
    ssh_mine = dict(ssh_world, IpRanges=[{"CidrIp": "203.0.113.7/32"}])
    assert world_open_non_ssh([dashboard, everything_v6]) == [dashboard, everything_v6]
    assert world_open_non_ssh([ssh_world, ssh_mine]) == []
