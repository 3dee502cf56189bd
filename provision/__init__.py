"""Provisioning: getting a named model's directory onto this machine (`serve --model coco-v1`,
`python -m engine predict --model coco-v1`, `./serve.sh --coco`).

The first use of a name installs what the export needs (the project's `export` extra: torch,
torchvision, onnx) into this Python's virtual environment (`install`), fetches the COCO
weights (`download`: torchvision's through its weights API, so they land in the torch-hub
cache; detectron2's model-zoo .pkl into the cache folder's downloads/), runs `build_engine.py`
in a child process and keeps the model directory under the cache folder (`build`). The names,
their weights and the cache folder's layout are engine.model_directory.named's.

Nothing here imports torch: the server process never does; only the child export does.
Without network, and with no cached weights, the whole thing is one line naming --weights PATH.
"""

from .build import ensure_named_model

__all__ = ["ensure_named_model"]
