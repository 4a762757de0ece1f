"""The launch recipes under launch/: Accelerate configs, the SLURM script, the CPU DDP script.

All fast: no GPU, no network. The shell scripts are run with stub commands (srun, scontrol,
accelerate, lstm-pipeline, python, torchrun) that only record their arguments.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SBATCH = LAUNCH / "slurm" / "train.sbatch"
CPU_DDP = LAUNCH / "cpu_ddp.sh"

EXPECTED = {
    "single_gpu.yaml": {"distributed_type": "NO", "num_processes": 1, "num_machines": 1, "mixed_precision": "no"},
    "multi_gpu_8.yaml": {
        "distributed_type": "MULTI_GPU",
        "num_processes": 8,
        "num_machines": 1,
        "mixed_precision": "no",
    },
    "multi_node_2x8.yaml": {
        "distributed_type": "MULTI_GPU",
        "num_processes": 16,
        "num_machines": 2,
        "mixed_precision": "no",
        "machine_rank": 0,
        "main_process_ip": "MAIN_NODE_IP",
    },
}

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")


def accelerate_configs() -> list[Path]:
    return sorted((LAUNCH / "accelerate").glob("*.yaml"))


def test_every_accelerate_config_is_known():
    assert [p.name for p in accelerate_configs()] == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_values(name):
    raw = yaml.safe_load((LAUNCH / "accelerate" / name).read_text())
    assert raw["compute_environment"] == "LOCAL_MACHINE"
    for key, value in EXPECTED[name].items():
        # type and value: an unquoted NO or no would load as the boolean False
        assert type(raw[key]) is type(value) and raw[key] == value, key
    assert raw["use_cpu"] is False


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_accepts_every_key(name):
    path = LAUNCH / "accelerate" / name
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(ClusterConfig.__dataclass_fields__)
    config = ClusterConfig.from_yaml_file(str(path))  # raises on a key accelerate does not know
    assert isinstance(load_config_from_file(str(path)), ClusterConfig)  # what `accelerate launch` loads
    loaded = config.to_dict()
    for key, value in raw.items():
        assert loaded[key] == value, key


def test_multi_node_flags_override_the_file():
    """What `accelerate launch` makes of the SLURM script's flags on machine 1 (no port check there)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        [
            "--config_file",
            str(LAUNCH / "accelerate" / "multi_node_2x8.yaml"),
            "--num_machines",
            "2",
            "--num_processes",
            "16",
            "--machine_rank",
            "1",
            "--main_process_ip",
            "node-a",
            "--main_process_port",
            "12345",
            "-m",
            "pipeline",
            "train",
            "--config",
            "configs/default.yaml",
        ]
    )
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert args.multi_gpu
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
    assert args.rdzv_backend == "static"
    # the file's same_network is not applied by accelerate 1.15 (its --same_network flag shadows it);
    # the static rendezvous then meets at rdzv_endpoint instead of master_addr:master_port
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "node-a:12345"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert args.module and args.training_script == "pipeline"
    assert args.training_script_args == ["train", "--config", "configs/default.yaml"]


def test_explicit_mixed_precision_beats_the_launcher(monkeypatch):
    """The launcher's mixed_precision only reaches the code as ACCELERATE_MIXED_PRECISION, which an
    explicit Accelerator(mixed_precision=...) overrides: the pipeline's train.mixed_precision wins."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    try:
        AcceleratorState._reset_state(reset_partial_state=True)
        assert Accelerator(mixed_precision="no").mixed_precision == "no"
        AcceleratorState._reset_state(reset_partial_state=True)
        assert Accelerator().mixed_precision == "bf16"  # only without an explicit value
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@needs_bash
@pytest.mark.parametrize("script", [SBATCH, CPU_DDP], ids=lambda p: p.name)
def test_shell_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_contents():
    text = SBATCH.read_text()
    for needle in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=",
        "#SBATCH --time=",
        "#SBATCH --output=",
        "set -euo pipefail",
        "launch/accelerate/multi_node_2x8.yaml",
        "-m pipeline train",
        "scontrol show hostnames",
        "SLURM_NODEID",
        "lstm-pipeline evaluate",
        "lstm-pipeline export",
    ]:
        assert needle in text, needle
    for flag in ["--num_machines", "--num_processes", "--machine_rank", "--main_process_ip", "--main_process_port"]:
        assert flag in text, flag


def test_cpu_ddp_contents():
    text = CPU_DDP.read_text()
    assert "ACCELERATE_USE_CPU=true torchrun" in text
    assert "-m pipeline train" in text
    assert os.access(CPU_DDP, os.X_OK)


def _stub(bin_dir: Path, name: str, body: str = "") -> None:
    path = bin_dir / name
    path.write_text(f'#!/usr/bin/env bash\n{body}\necho "{name} $*" >> "$STUB_LOG"\n')
    path.chmod(0o755)


def _run_with_stubs(tmp_path: Path, script: Path, args: list[str], env: dict[str, str]) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in ["accelerate", "lstm-pipeline", "python"]:
        _stub(bin_dir, name)
    _stub(bin_dir, "torchrun", 'echo "env ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-}" >> "$STUB_LOG"')
    _stub(bin_dir, "scontrol", "printf 'gpu-a01\\ngpu-a02\\n'")
    # srun: drop its own options, then run the command once per node with that node's SLURM_NODEID
    srun = (
        'while [[ "$1" == --* ]]; do shift; done\n'
        'for node in 0 1; do SLURM_NODEID=$node SLURM_PROCID=$node "$@"; done\n'
        'echo "srun" >> "$STUB_LOG"'
    )
    (bin_dir / "srun").write_text(f"#!/usr/bin/env bash\n{srun}\n")
    (bin_dir / "srun").chmod(0o755)
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "HOME": str(tmp_path),
        **env,
    }
    result = subprocess.run(
        ["bash", str(script), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


@needs_bash
def test_sbatch_runs_one_launch_per_node(tmp_path):
    calls = _run_with_stubs(
        tmp_path,
        SBATCH,
        ["train.max_steps=5"],
        {
            "SLURM_JOB_ID": "4242",
            "SLURM_NNODES": "2",
            "SLURM_JOB_NODELIST": "gpu-a[01-02]",
            "SLURM_SUBMIT_DIR": str(REPO),
            "SLURM_CPUS_PER_TASK": "64",
            "CONFIG": "configs/x.yaml",
        },
    )
    launches = [c for c in calls if c.startswith("accelerate launch")]
    assert len(launches) == 2
    for rank, line in enumerate(launches):
        words = line.split()
        flags = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        assert flags["--config_file"] == "launch/accelerate/multi_node_2x8.yaml"
        assert flags["--num_machines"] == "2"
        assert flags["--num_processes"] == "16"
        assert flags["--machine_rank"] == str(rank)
        assert flags["--main_process_ip"] == "gpu-a01"
        assert flags["--main_process_port"] == str(10000 + 4242 % 20000)
        assert line.endswith("-m pipeline train --config configs/x.yaml train.max_steps=5")
    stages = [c for c in calls if c.startswith("lstm-pipeline")]
    assert stages == [
        f"lstm-pipeline {stage} --config configs/x.yaml train.max_steps=5"
        for stage in ("ingest", "window", "evaluate", "export")
    ]
    # order: data stages, then training, then evaluate and export
    assert calls.index(stages[1]) < calls.index(launches[0]) and calls.index(launches[1]) < calls.index(stages[2])


@needs_bash
def test_cpu_ddp_passes_config_and_overrides(tmp_path):
    calls = _run_with_stubs(tmp_path, CPU_DDP, ["configs/x.yaml", "train.max_steps=5"], {"NPROC": "3"})
    assert calls[-1] == "torchrun --nproc_per_node 3 -m pipeline train --config configs/x.yaml train.max_steps=5"
    assert calls[-2] == "env ACCELERATE_USE_CPU=true"
    assert calls[:2] == [
        "python -m pipeline ingest --config configs/x.yaml train.max_steps=5",
        "python -m pipeline window --config configs/x.yaml train.max_steps=5",
    ]


@needs_bash
def test_cpu_ddp_defaults(tmp_path):
    calls = _run_with_stubs(tmp_path, CPU_DDP, [], {})
    assert calls[-1] == "torchrun --nproc_per_node 2 -m pipeline train --config configs/default.yaml"


RECIPES = ["cron/retrain.sh", "slurm/retrain.sbatch", "slurm/train.sbatch", "cpu_ddp.sh"]
# variables a recipe's own code does not read but what it runs does
READ_ELSEWHERE = {"ACCELERATE_USE_CPU"}  # read by the pipeline (pipeline/library/runtime.py)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_variable_a_recipe_mentions_is_read(recipe):
    """A variable the header tells the user to set (`NAME=...`, `NAME (default ...)`) is read by the code."""
    text = (REPO / "launch" / recipe).read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#") and not line.startswith("#!"))
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    mentioned = set(re.findall(r"\b([A-Z][A-Z0-9_]{3,})(?:=|\s\(|,\s*default)", comments)) - READ_ELSEWHERE
    unread = sorted(name for name in mentioned if not re.search(rf"\$\{{?{name}\b", code))
    assert unread == [], f"{recipe} mentions {unread} but never reads them"
    # a command line shown in the header that sets a variable for another recipe: that recipe reads it
    for line in comments.splitlines():
        ran = re.search(r"launch/([\w/]+\.(?:sh|sbatch))", line)
        for name in re.findall(r"\b([A-Z][A-Z0-9_]{3,})=", line) if ran else []:
            target = (REPO / "launch" / ran.group(1)).read_text()
            assert re.search(rf"\$\{{?{name}\b", target) or name in READ_ELSEWHERE, f"{ran.group(1)} ignores {name}"


def test_the_kubernetes_cronjob_runs_without_a_wandb_secret():
    docs = list(yaml.safe_load_all((REPO / "launch/k8s/cronjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "CronJob")
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    key = next(e for e in container["env"] if e["name"] == "WANDB_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["optional"] is True  # no secret: the CLI tracks offline


def _port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def test_the_kubernetes_deployment_serves_the_registry_the_cronjob_writes():
    """Same claim, `lstm-pipeline serve` on `current` under the CronJob's registry.dir, probes on /health."""
    from pipeline.config import load_config
    from pipeline.orchestrators.cli import parse_args

    jobs = {d["kind"]: d for d in yaml.safe_load_all((LAUNCH / "k8s/cronjob.yaml").read_text())}
    serving = {d["kind"]: d for d in yaml.safe_load_all((LAUNCH / "k8s/deployment.yaml").read_text())}
    assert set(serving) == {"Deployment", "Service"}
    claim = jobs["PersistentVolumeClaim"]["metadata"]["name"]

    def claim_mount(pod: dict) -> tuple[dict, dict]:
        """(the pod's container, its mount of the claim)."""
        (container,) = pod["containers"]
        (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        return container, mount

    job, job_mount = claim_mount(jobs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    job_args = parse_args(job["args"])
    cfg = load_config(REPO / job_args.config, job_args.overrides)
    registry_on_claim = Path(cfg.registry.dir).relative_to(job_mount["mountPath"])

    deployment = serving["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    container, mount = claim_mount(pod)
    assert mount.get("readOnly") is True  # the service only reads the registry
    args = parse_args(container["args"])  # the arguments of the image's ENTRYPOINT (lstm-pipeline)
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert Path(args.model) == Path(mount["mountPath"]) / registry_on_claim / cfg.name / "current"
    assert container["image"] == job["image"]
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == "/health" and _port_number(container, probe["port"]) == args.port, kind

    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    service = serving["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [_port_number(container, p["targetPort"]) for p in service["ports"]] == [args.port]
    user = [ln.split()[1] for ln in (REPO / "docker/Dockerfile").read_text().splitlines() if ln.startswith("USER ")]
    assert pod["securityContext"]["runAsUser"] == int(user[-1].split(":")[0])
