"""Kubernetes manifests (rendered with kubectl's kustomize, validated with kubernetes-validate
--strict), alert rules (promtool test rules), and the Dockerfile (hadolint; same install step as
the README)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.kernels.targets import best_level, host_features
from tests.conftest import require_external_marker
from tests.service.conftest import require_binary
from tests.side_builds import Finished

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    require_external_marker(name)
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is a test dependency: pip install -e '.[test]'")
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    run = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


OVERLAYS = ["dev", "prod", "prod-external-redis"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.external
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    run = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(out)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout + run.stderr


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.external
def test_deployment_contract(overlay: str) -> None:
    docs = render(overlay)
    deployment = by_kind(docs, "Deployment")
    config = by_kind(docs, "ConfigMap")["data"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert container["startupProbe"]["grpc"]["port"] == 8001
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    resources = container["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    # one worker process per requested core, one numba thread each
    workers = next(e for e in container["env"] if e["name"] == "EMBSERVE_WORKERS")["valueFrom"]["resourceFieldRef"]
    assert workers == {"containerName": "embserve", "resource": "requests.cpu", "divisor": "1"}
    assert config["EMBSERVE_NUMBA_THREADS"] == "1" and "NUMBA_NUM_THREADS" not in config
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"] + float(config["EMBSERVE_GRACE_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain
    assert {p["name"] for p in container["ports"]} == {"http", "grpc"}
    assert {p["name"] for p in by_name(docs, "Service", "embserve")["spec"]["ports"]} == {"http", "grpc"}
    assert any(v["mountPath"] == "/tables" for v in container["volumeMounts"])
    # found by a review: no overlay made its namespace, so apply failed on a fresh cluster
    assert by_kind(docs, "Namespace")["metadata"]["name"] == deployment["metadata"]["namespace"]
    if overlay == "dev":
        assert deployment["spec"]["replicas"] == 1 and config["EMBSERVE_DEMO"] == "true"
    else:
        # the autoscaler owns the count (a count in the Deployment reset it at every apply), and
        # the budget lets one pod go at a time (minAvailable 2 with 2 pods blocked every drain)
        assert "replicas" not in deployment["spec"]
        hpa = by_kind(docs, "HorizontalPodAutoscaler")
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        assert kinds == {"Resource", "Pods"} and hpa["spec"]["minReplicas"] >= 2
        assert by_kind(docs, "PodDisruptionBudget")["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "embserve"}},
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.external
def test_redis_in_the_prod_overlays(overlay: str) -> None:
    docs = render(overlay)
    container = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("valueFrom", {}) for e in container["env"]}
    assert env["EMBSERVE_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    redis_sets = [d for d in docs if d["kind"] == "StatefulSet"]
    if overlay == "dev":
        assert "EMBSERVE_REDIS_URL" not in env and not redis_sets
        return
    # the URL (with its password) comes from a Secret, never from the ConfigMap
    assert env["EMBSERVE_REDIS_URL"] == {"secretKeyRef": {"name": "embserve-redis", "key": "url"}}
    assert "EMBSERVE_REDIS_URL" not in by_kind(docs, "ConfigMap")["data"]
    if overlay == "prod-external-redis":
        assert not redis_sets and all(d["metadata"]["name"] != "embserve-redis" for d in docs)
        return
    (redis,) = redis_sets
    pod = redis["spec"]["template"]
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and "--requirepass" in args
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction" and "--maxmemory" in args
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # the embserve Service and PodDisruptionBudget never select the Redis pod
    selector = by_name(docs, "Service", "embserve")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
    assert by_name(docs, "Service", "embserve-redis")["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_config_map_keys_are_real_settings() -> None:
    from service.settings import Settings

    config = yaml.safe_load((DEPLOY / "base" / "configmap.yaml").read_text())["data"]
    known = {f"EMBSERVE_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in config if k.startswith("EMBSERVE_")} <= known


@pytest.mark.external
def test_alert_rules_pass_their_unit_tests() -> None:
    promtool = require_binary("promtool")
    run = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yaml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.external
def test_dockerfile_lints_without_errors() -> None:
    run = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "error", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_installs_as_the_readme_does() -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(python3 -m venv .*)\n```", readme)
    assert first is not None
    install = re.search(r"(pip install [^&]+?)\s*&&\s*embserve serve", first.group(1))
    assert install is not None
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"RUN {install.group(1).strip()}\n" in dockerfile
    # numba caches are built for fixed targets, one a level, and the final stage picks among them
    assert "RUN python -m runtime.warm --levels /opt/numba-cache\n" in dockerfile
    assert "EMBSERVE_NUMBA_CACHES=/opt/numba-cache" in dockerfile
    assert "NUMBA_CPU_NAME" not in dockerfile and "NUMBA_CACHE_DIR" not in dockerfile
    assert "libgomp1" in dockerfile and "EXPOSE 8000 8001" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M)
    assert 'ENTRYPOINT ["embserve"]' in dockerfile


COUNT_CACHE_MISSES = """
import os, tempfile
from pathlib import Path
from runtime.kernels import cpu
from runtime.warm import example_tables
from tests.request_mix import kernel_dispatchers, serve_requests
# a container starting: every example table loaded and warmed, then sent its first requests
with tempfile.TemporaryDirectory() as tmp:
    for table in example_tables(Path(tmp)):
        table.warmup()
        serve_requests(table)
kernels = [kernel for _, kernel in kernel_dispatchers()]
hits = sum(sum(kernel.stats.cache_hits.values()) for kernel in kernels)
misses = sum(sum(kernel.stats.cache_misses.values()) for kernel in kernels)
print(hits, misses, os.environ.get("NUMBA_CACHE_DIR"), ",".join(cpu.describe()["features"]))
"""


WARMED_LEVEL = best_level(host_features())


def environment_without_numba_targets() -> dict[str, str]:
    """This process's environment less every variable that picks numba's target or cache."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "EMBSERVE_NUMBA_CACHES"}


def warmed_level_build(directory: Path) -> tuple[list[str], dict[str, str]]:
    # as the Dockerfile does: compile into a cache for a fixed target, the best level this CPU runs
    # (building every level would double the time)
    env = environment_without_numba_targets()
    if WARMED_LEVEL is None:
        return [sys.executable, "-c", ""], env
    return [sys.executable, "-m", "runtime.warm", "--levels", str(directory / "caches"), WARMED_LEVEL.name], env


@pytest.mark.slow
@pytest.mark.side_build(command=warmed_level_build)
def test_build_time_warmup_fills_the_cache_a_server_starts_from(side_build: Finished) -> None:
    # a second process (the container starting, with only EMBSERVE_NUMBA_CACHES set) must pick the
    # cache the build made, find every kernel it and its first requests run there and compile nothing
    level = WARMED_LEVEL
    if level is None:
        pytest.skip("this CPU runs no level of runtime.kernels.targets (no AVX2)")
    build = side_build
    assert build.returncode == 0, build.stderr[-4000:]
    caches = build.directory / "caches"
    assert sorted(p.name for p in caches.iterdir()) == [level.name]
    cached = {p.name.split("-")[0] for p in (caches / level.name).rglob("*.nbi")}
    expected = {
        "rowwise.gather_checked_into",
        "rowwise.bags_serial",
        "rowwise.bags_chunked",
        "dense.fp16_gather_checked_into",
    }
    assert expected <= cached, cached
    env = environment_without_numba_targets()
    start = subprocess.run(
        [sys.executable, "-c", COUNT_CACHE_MISSES],
        env={**env, "EMBSERVE_NUMBA_CACHES": str(caches)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert start.returncode == 0, start.stderr
    hits, misses, cache_dir, features = start.stdout.split()
    assert int(hits) > 0 and int(misses) == 0, (hits, misses)
    assert cache_dir == str(caches / level.name)
    # the AVX-512 level's kernels take their 512-bit paths
    wide = {"avx512f", "avx512bw", "avx512vbmi", "avx512vpopcntdq"}
    assert (wide if "avx512f" in level.features else {"avx2"}) <= set(features.split(",")), features
