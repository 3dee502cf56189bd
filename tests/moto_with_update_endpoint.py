"""moto's server (`python -m moto.server`) with SageMaker UpdateEndpoint added.

moto 5 has no UpdateEndpoint: its server answers 500 (NotImplemented inside). This adds
the smallest faithful version for tests/test_deploy.py: the endpoint keeps its name, ARN
and creation time, takes the new config's variants and is InService at once (moto's
endpoints never pass through Creating or Updating either). Run it as moto's server:

    python tests/moto_with_update_endpoint.py -H 127.0.0.1 -p PORT
"""

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.sagemaker.responses import SageMakerResponse
from moto.server import main


def update_endpoint(self) -> ActionResult:
    backend = self.sagemaker_backend
    name = self._get_param("EndpointName")
    config_name = self._get_param("EndpointConfigName")
    backend.describe_endpoint(name)  # raises moto's ValidationException if it does not exist
    config = backend.describe_endpoint_config(config_name)  # likewise
    endpoint = backend.endpoints[name]
    endpoint.endpoint_config_name = config_name
    endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
    endpoint.last_modified_time = utcnow()
    return ActionResult({"EndpointArn": endpoint.arn})


if not hasattr(SageMakerResponse, "update_endpoint"):  # a later moto may have its own
    SageMakerResponse.update_endpoint = update_endpoint

if __name__ == "__main__":
    main()
