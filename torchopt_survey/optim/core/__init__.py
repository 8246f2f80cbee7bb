"""The machinery every method runs on; the methods themselves live one level up.

* :mod:`.base` -- ``SurveyOptimizer``: state, hooks, weight decay, ``maximize``, state dicts, and
  the forloop / foreach / differentiable / capturable paths around a method's ``_update``.
* :mod:`.ops` -- the backends ``_update`` is written against (in place, out of place, foreach).
* :mod:`.validation` -- argument checks shared by the constructors and ``load_state_dict``.
* :mod:`.tracing` -- records ``_update`` into an elementwise graph for the fused path.
* :mod:`.emit` -- the one walk over that graph; :mod:`.emit_c`, :mod:`.emit_triton` -- its C
  (CPU) and Triton (CUDA) spellings and their compile/launch code.
* :mod:`.kernel_cache` -- the private on-disk cache the generated kernels are loaded from.
* :mod:`.fused` -- dispatch of ``fused=True`` steps to those kernels.
"""
