"""The generator taken out of this repository, one module each:

- ``export.weights``: safetensors weights (no pickle) with their config, and
  the Hugging Face-style folder (model.safetensors, config.json, README.md,
  directions.safetensors) that ``network.load_generator`` reads back
- ``export.model_card``: the folder's README.md, its numbers read from
  ``assets/celeba_64.card.json`` (the ones in BENCHMARKS.md, a test checks)
- ``export.onnx_export``: the ONNX file onnxruntime runs without PyTorch
- ``export.onnx_runtime``: that file run by onnxruntime, called like the torch generator

    python generator.py --params assets/celeba_64.params --export celeba_64          # the folder
    python generator.py --params assets/celeba_64.params --export celeba_64.safetensors
"""
