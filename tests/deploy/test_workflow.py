"""The GitHub Actions workflow (.github/workflows/ci.yml) cannot run here: its contract is checked instead.

Pushes to main and release tags (vX.Y.Z) publish the image to the GitHub container registry as
ghcr.io/OWNER/REPO:<full commit sha>, :main (main only) and :vX.Y.Z (tags only), logged in with the repository's
own GITHUB_TOKEN (no other secret), only after lint and the test suite passed and after the built image proved
healthy; pull requests publish nothing, and no job but the image job may write packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    loaded["on"] = loaded.pop(True, loaded.get("on"))
    return loaded


def _steps(job: dict[str, Any], action: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, step) for i, step in enumerate(job["steps"]) if str(step.get("uses", "")).startswith(action + "@")]


def test_triggers(workflow: dict[str, Any]) -> None:
    on = workflow["on"]
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*.*.*"]
    assert on["pull_request"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}, "read-only unless a job asks for more"
    writers = [name for name, job in workflow["jobs"].items() if "write" in str(job.get("permissions", {}))]
    assert writers == ["image"]


def test_image_job_publishes_to_ghcr_with_the_repository_token(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["image"]
    assert job["if"] == "github.event_name == 'push'", "main and tags, never pull requests"
    assert set(job["needs"]) == {"lint", "test"}
    assert job["permissions"] == {"contents": "read", "packages": "write"}

    [(login_at, login)] = _steps(job, "docker/login-action")
    assert login["with"] == {
        "registry": "ghcr.io",
        "username": "${{ github.actor }}",
        "password": "${{ secrets.GITHUB_TOKEN }}",
    }
    text = WORKFLOW.read_text()
    assert text.count("secrets.") == 1, "the repository's GITHUB_TOKEN is the only secret"

    [(_, meta)] = _steps(job, "docker/metadata-action")
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"
    rules = [line.strip() for line in meta["with"]["tags"].splitlines() if line.strip()]
    assert rules == [
        "type=sha,format=long,prefix=",  # :<40-hex commit sha>
        "type=raw,value=main,enable=${{ github.ref == 'refs/heads/main' }}",  # :main, pushes to main only
        "type=semver,pattern=v{{version}}",  # :vX.Y.Z, release tags only
    ]

    builds = _steps(job, "docker/build-push-action")
    pushes = [(i, step) for i, step in builds if step["with"].get("push") is True]
    local = [(i, step) for i, step in builds if step["with"].get("push") is False]
    assert len(pushes) == 1 and len(local) == 1
    (push_at, push), (build_at, build) = pushes[0], local[0]
    assert push["with"]["tags"] == "${{ steps.meta.outputs.tags }}" and meta["id"] == "meta"
    assert push["with"]["labels"] == "${{ steps.meta.outputs.labels }}"
    for step in (push, build):
        assert step["with"]["context"] == "." and step["with"]["file"] == "Dockerfile"
    assert build["with"]["load"] is True and build["with"]["tags"] == "timetodo:ci"

    checks = [i for i, step in enumerate(job["steps"]) if "turns healthy" in str(step.get("name", ""))]
    assert len(checks) == 1
    check = job["steps"][checks[0]]["run"]
    assert "Health.Status" in check and "pg_dump --version" in check and "10001:10001" in check
    assert build_at < checks[0] < login_at < push_at, "build, prove healthy, then log in and push"


def test_actions_are_pinned_to_a_major_version(workflow: dict[str, Any]) -> None:
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "uses" in step:
                _, _, version = step["uses"].partition("@")
                assert version.startswith("v") and version[1:].split(".")[0].isdigit(), f"{name}: {step['uses']}"
