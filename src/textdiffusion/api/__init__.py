"""The front door: `Pipeline` (load a model folder; generate, infill, edit, score, chat), long-text scoring, gap
syntax, chat templates and guidance settings. `textdiffusion.Pipeline` is `api.pipeline.Pipeline`."""
