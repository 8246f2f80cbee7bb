"""The machinery every method runs on; the methods themselves live one level up.

First-order methods (one ``_update`` each, every path generated from it):

* :mod:`.base` -- ``SurveyOptimizer``: state, hooks, weight decay, ``maximize``, state dicts, and
  the forloop / foreach / differentiable / capturable paths around a method's ``_update``.
* :mod:`.ops` -- the backends ``_update`` is written against (in place, out of place, foreach).
* :mod:`.validation` -- argument checks shared by the constructors and ``load_state_dict``.
* :mod:`.tracing` -- records ``_update`` into an elementwise graph for the fused path.
* :mod:`.emit` -- one walk over that graph; :mod:`.emit_c` and :mod:`.emit_triton` spell it as a
  C (CPU) or Triton (CUDA) kernel; :mod:`.kernel_cache` stores and loads them privately.
* :mod:`.fused` -- checks and dispatch of ``fused=True`` steps to those kernels.
* :mod:`.in_backward` -- ``step_in_backward``: each parameter updated from its gradient hook.
* :mod:`.compact_state` -- ``state_dtype``: bfloat16 / 8-bit state around the same update
  (read and written inside the generated C kernel on the fused CPU path).
* :mod:`.codes` -- the 8-bit code maps and the rounding hash, shared by :mod:`.compact_state`
  and the C kernel (which must quantise and round bit for bit alike).

Second-order methods (closures over flat parameter views instead of ``_update``):

* :mod:`.second_order` -- their base class (closure contract, stop tests, damping, state).
* :mod:`.line_search` -- the strong-Wolfe line search all three share.
* :mod:`.curvature` -- flat views, Hessian-vector and Gauss-Newton products.
"""
