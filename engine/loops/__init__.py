"""The state functions of the built-in machines: fit, evaluate (validate/test/sanity check/predict)."""

from engine.loops.evaluate import EvalLoop, build_eval_machine
from engine.loops.fit import FIT_STATES, FitLoop, build_fit_machine

__all__ = ["EvalLoop", "FitLoop", "FIT_STATES", "build_eval_machine", "build_fit_machine"]
