"""The SageMaker Model: one container (image, model data, mode, environment) and a role,
under the name the user gave, or a timestamped one.

A name given is used exactly as given, as the SageMaker Python SDK does: `describe_model`,
`transform --model-name` and the console then find it under that name. Deploying again
under a name that exists reuses that Model when it holds the same container and role,
and stops otherwise. Replacing it would change what every endpoint config that names it
runs at its next scale-out, and SageMaker refuses to create a second Model of one name
anyway, so the choice is left to the user: another name, or delete the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.environment import SAGEMAKER_MULTI_MODEL

from .errors import DeployError

SINGLE_MODEL = "SingleModel"  # what SageMaker assumes when a container names no Mode
MULTI_MODEL = "MultiModel"
# A container in multi-model mode starts with no model and loads them through POST /models;
# the variable is how the container learns it (AWS's own inference containers read it too).
MULTI_MODEL_ENVIRONMENT = {SAGEMAKER_MULTI_MODEL: "true"}


@dataclass(frozen=True)
class ModelSpec:
    """What a Model holds. `model_data_url` is a model.tar.gz, or for MULTI_MODEL the S3
    prefix (ending in '/') under which the models lie."""

    name: str
    image_uri: str
    role_arn: str
    model_data_url: str
    mode: str = SINGLE_MODEL
    environment: Mapping[str, str] = field(default_factory=dict)

    def container(self) -> dict:
        """create_model's PrimaryContainer. Mode and Environment only when they say
        something: a single-model container without them is what earlier deployments made."""
        container = {"Image": self.image_uri, "ModelDataUrl": self.model_data_url}
        if self.mode != SINGLE_MODEL:
            container["Mode"] = self.mode
        if self.environment:
            container["Environment"] = dict(self.environment)
        return container


def describe(sm, name: str) -> dict | None:
    """describe_model's answer, or None if there is no Model of that name."""
    try:
        return sm.describe_model(ModelName=name)
    except sm.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationException" and "Could not find model" in error.get("Message", ""):
            return None
        raise


def differences(spec: ModelSpec, description: dict) -> list[str]:
    """How an existing Model differs from `spec`: one `what (it has X)` per difference."""
    container = description.get("PrimaryContainer")
    if container is None:  # an inference pipeline (Containers) or a model package
        return ["no single primary container"]
    found = []
    for what, theirs, ours in [
        ("image", container.get("Image"), spec.image_uri),
        ("model data", container.get("ModelDataUrl"), spec.model_data_url),
        ("mode", container.get("Mode") or SINGLE_MODEL, spec.mode),
        ("environment", container.get("Environment") or {}, dict(spec.environment)),
        ("role", description.get("ExecutionRoleArn"), spec.role_arn),
    ]:
        if theirs != ours:
            found.append(f"{what} (it has {_short(theirs)})")
    return found


def ensure(sm, spec: ModelSpec, echo: Callable[[str], None], existing: dict | None = None) -> bool:
    """Create the Model, or reuse the one of that name if it holds the same container and
    role; DeployError (exit status 1) if it holds another, and nothing is created.
    `existing` is describe()'s answer when the caller already has it. True if created."""
    if existing is None:
        existing = describe(sm, spec.name)
    if existing is not None:
        found = differences(spec, existing)
        if found:
            raise DeployError(conflict_message(spec.name, found))
        echo(f"reusing model {spec.name} (the same image, model data and settings)")
        return False
    sm.create_model(ModelName=spec.name, ExecutionRoleArn=spec.role_arn, PrimaryContainer=spec.container())
    echo(f"created model {spec.name}")
    return True


def conflict_message(name: str, found: list[str]) -> str:
    return (f"model {name} already exists with a different {', '.join(found)}: deploy under another "
            f"--model-name, or delete it first (aws sagemaker delete-model --model-name {name})")


def _short(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(value.items())) + "}"
    return str(value)
