"""``sweep``: each optimizer tuned over a learning-rate grid (and more) on validation, over seeds.

Protocol (DeepOBS, Choi et al. 2019, AlgoPerf): every (optimizer, hyperparameters, seed) is a
normal run; an optimizer's setting is chosen by the seed-mean of its task's final *validation*
metric (MNIST: ``val/accuracy`` on the ``val_split`` fraction of the training set; Karate:
``val/auc``), and reported on the *test* set as mean +- std over seeds at that setting. Runs
of one architecture are trained N at a time as one vectorised program where possible; a run
that crashes is recorded as failed, with its error, and the others go on.

:mod:`.grid` (the grid and its run specs), :mod:`.execute` (running them, locally),
:mod:`.ray_backend` (the same on Ray Tune), :mod:`.tables` (the sweep's tables).
"""
