"""Monitoring: is the served model still right, and should it be retrained?

In: the prediction log (``predlog``) or a window of data, the version's reference profile
(``reference``: written at featurize, kept in the bundle), labels that arrive later (``labels``).
Out: drift reports per field with calibrated thresholds (``drift``, ``stats``, ``histograms``,
``calendar`` for cyclic date parts), live metrics, decision thresholds that follow the base rate
(``thresholds``), retrain decisions (``retrain``) and the HTML report (``report``).
"""
