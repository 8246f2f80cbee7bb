"""Tasks: what is trained (data, model, loss, metrics, defaults) and the training techniques.

One module per built-in task (:mod:`.mnist`, :mod:`.karate`), the optimizer registry
(:mod:`.optimizers`), the configuration schema (:mod:`.config`) and the one place that maps an
experiment name to its task (:mod:`.registry`).
"""
