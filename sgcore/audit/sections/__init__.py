"""The audit report's sections, one module each.

Convention: the metrics live in ``sgcore/audit/<metric>.py`` (pure numpy/torch); a section lives
here, in ``sections/<name>.py``, with the *feed* that takes what it needs from the audit's one
pass over the parts (:mod:`sgcore.audit.scan`), if it needs anything, and one function that
writes its part of the report and of ``summary.json``.
"""
