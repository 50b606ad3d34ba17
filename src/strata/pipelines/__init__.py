"""Kubeflow pipelines: thin components over the same library functions the CLI calls.

- `steps`: each pipeline step as a plain function (storage URI + parameters -> JSON dict).
- `components`: KFP v2 components that forward to `steps` (built per image, no logic).
- `pipelines`: the `initial`, `incremental` and `ctr-retrain` graphs and their compilation.
- `runner`: local runs (KFP SubprocessRunner), KFP host submit/schedule, the drift-monitor hook.
- `storage`: the storage URI (local folder, or any fsspec URI mirrored per step).

Everything that touches KFP needs the `pipelines` extra (`pip install 'strata[pipelines]'`).
"""
