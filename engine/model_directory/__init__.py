"""The model-directory layer: what a model directory is, and which one to use.

A model directory (written by build_engine.py) holds model.json and the files it names: the
three ONNX graphs, and TensorRT plans once `build_engine.py --tensorrt` has run. This layer
reads and checks it; it runs nothing (no graph is loaded, no runtime imported, no process
started), so the server, the CLI, the exporter and the deploy tool all build on it.

    config.py          model.json as typed, frozen dataclasses (ModelConfig), checked at load
    schema.py          the parsing and writing behind those dataclasses
    directory.py       ModelDir: a checked directory (every file present, sha256s matching)
    defaults.py        which directory when none is named: --model-dir, $SM_MODEL_DIR,
                       /opt/ml/model, else the bundled demo model
    info.py            what a directory holds, for people and as JSON (`python -m engine info`)
    named.py           the named models (`serve --model coco-v1`) and the cache folder they are
                       built into (building them is the `provision` package's work)
    tensorrt_plans.py  TensorRT plans' profile shapes, and whether plans can run here
"""
