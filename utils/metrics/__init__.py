"""Exact threshold-curve metrics (AUROC, AP, F1-max, AUPRO) behind ``utils.eval_helper``.

Modules, one concern each:
- ``sort_keys``: float scores -> unsigned integer keys whose ascending order is descending score;
- ``regions``: ground-truth connected components (8-connectivity) and their sizes;
- ``curves``: one sort per score set -> cumulative counts at every distinct threshold;
- ``summaries``: AUROC / AP / F1-max / AUPRO from a curve;
- ``image_scores``: per-image scores ``mean``, ``std``, ``max`` (avg-pooled);
- ``spec``: parsing and validation of the ``evaluator.metrics`` config.
"""
