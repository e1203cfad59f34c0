"""The `vidmem` command: the pipeline's trained models on a user's own videos (caption, index, search).

It stands beside `stages/` (it drives models/ and metrics/, which the library vidmem/ never imports) and
reuses their code by import: `vidmem.video` / `stages.compress` to transcode, `models.encoders.extract` to
extract into zarr stores like the pipeline's, and each family's task (`stages.dispatch.task_for`) to predict.
"""
