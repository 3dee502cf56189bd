"""Batch Transform: every image under an S3 prefix through a model, one image per request.

The job sends each S3 object as one record (SplitType None, BatchStrategy SingleRecord,
at most 6 MB) and writes `<input key>.out` under the output prefix. MaxConcurrentTransforms
is left out, so SageMaker asks the container's GET /execution-parameters for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.media_types import JPEG, JSON

from .waiting import wait_for_status

WAIT_S = 12 * 3600
POLL_S = 30.0
MAX_PAYLOAD_MB = 6
OUTPUT_SUFFIX = ".out"  # what Batch Transform appends to each input's name
FINISHED = ("Completed", "Failed", "Stopped")


@dataclass(frozen=True)
class TransformSpec:
    job_name: str
    model_name: str
    input_uri: str  # s3:// prefix holding the images
    output_uri: str  # s3:// prefix for the answers
    instance_type: str
    instance_count: int = 1
    content_type: str = JPEG
    accept: str = JSON


def job_request(spec: TransformSpec) -> dict:
    """create_transform_job's arguments."""
    return {
        "TransformJobName": spec.job_name,
        "ModelName": spec.model_name,
        "BatchStrategy": "SingleRecord",  # the API's spelling, not the container guide's
        "MaxPayloadInMB": MAX_PAYLOAD_MB,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.input_uri}},
            "ContentType": spec.content_type,
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": spec.output_uri, "Accept": spec.accept, "AssembleWith": "None"},
        "TransformResources": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
    }


def start(sm, spec: TransformSpec) -> str:
    """Create the job; returns its ARN."""
    return sm.create_transform_job(**job_request(spec))["TransformJobArn"]


def wait_finished(sm, job_name: str, echo: Callable[[str], None]) -> dict:
    """Poll describe_transform_job until the job is Completed, Failed or Stopped, and return
    the description (the caller decides what a failure means)."""
    return wait_for_status(lambda: sm.describe_transform_job(TransformJobName=job_name),
                           what=f"transform job {job_name}", status_key="TransformJobStatus",
                           done=FINISHED, failed=(), deadline_s=WAIT_S, interval_s=POLL_S, echo=echo)


def duration_s(description: dict) -> float | None:
    """Seconds from start to end (or from creation to the last change), if known."""
    start = description.get("TransformStartTime") or description.get("CreationTime")
    end = description.get("TransformEndTime") or description.get("LastModifiedTime")
    return (end - start).total_seconds() if start and end else None
