"""The base maps that SmoothGrad smooths, one module each, behind one small protocol (:class:`Base`).

- :mod:`~sgcore.attribution.bases.gradient`: ∂S_c/∂x̃ (Simonyan et al. 2014).
- :mod:`~sgcore.attribution.bases.input_x_gradient`: x̃ ⊙ ∂S_c/∂x̃ (Shrikumar et al. 2016).
- :mod:`~sgcore.attribution.bases.integrated_gradients`: the path integral from
  a baseline (Sundararajan et al. 2017), by Gauss–Legendre quadrature.
- :mod:`~sgcore.attribution.bases.guided_backprop`: negative gradients zeroed
  at every ReLU (Springenberg et al. 2015).

Both kernels (``smoothgrad`` and ``smoothgrad_adaptive``) look the ``base``
argument up in :data:`BASE_TABLE` and call the class, never the name. A new
base is one class (a :class:`Pointwise` subclass when it needs only the
gradient at the noisy point) and one entry here; the job's config learns its
name from ``sgcore.settings.Base`` (a test pins the two to the same names in the
same order).
"""

from sgcore.attribution.bases.base import Base, Pointwise
from sgcore.attribution.bases.gradient import Gradient
from sgcore.attribution.bases.guided_backprop import GuidedBackprop
from sgcore.attribution.bases.input_x_gradient import InputXGradient
from sgcore.attribution.bases.integrated_gradients import IntegratedGradients

BASE_TABLE: dict[str, type[Base]] = {
    cls.name: cls for cls in (Gradient, InputXGradient, IntegratedGradients, GuidedBackprop)
}

__all__ = ["BASE_TABLE", "Base", "Gradient", "GuidedBackprop", "InputXGradient", "IntegratedGradients",
           "Pointwise"]
