"""Training (paper §3.2, Eq. 2): the backend contract (``contract``), the backend-neutral loop
(``loop``), checkpoints, batches made ahead in worker processes (``prefetch``, ``step_workers``)
and the data recipes: the EntityBench stream (``data``, ``scene_atlas``) and a researcher's own
collection (``folder_data``). The backends' trainers live in ``reimagen.backends.*.trainer``.
"""
