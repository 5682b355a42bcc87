"""Everything an experiment needs and a deployed pipeline does not: fit-and-judge stages, metrics of
prediction sets and routing decisions, audits, comparisons and sweep aggregation.

Modules (import them directly; this package imports nothing heavy):

=====================  ===============================================================================
``pipeline``           :func:`~calib.evaluation.pipeline.fit_and_evaluate`, ``PipelineResult`` (writes
                       metrics.json, the figures and artifact/), ``METRIC_KEYS``
``conformal``          ``conformal_stage``: fit a conformal predictor, its metrics.json section, plot data
``set_metrics``        coverage, set sizes, class- and group-conditional coverage of prediction sets
``conformal_audit``    repeated-split validity audit of conformal predictors (exact BetaBinomial law)
``routing``            ``policy_stage`` and ``evaluate_routing``: route, product metrics, plot data
``product_metrics``    automation / escalation / silent-failure rates, costs, bootstrap CIs
``intervals``          calibration-metric bootstrap (before, after, paired difference) and procedure-level
                       intervals (calibration and test rows resampled, everything refitted)
``slices``             silent-failure slice finder (binomial tests, Holm correction)
``compare``            ``compare_models`` / ``markdown_table``: models sharing one test set
``policy_audit``       Learn-then-Test guarantee audit over random splits
``shift_report``       calibrate on one split, check the routing guarantee on a shifted one
``results``            sweep aggregation: results.csv, summary.md, summary.png, published.md
=====================  ===============================================================================

Figures are drawn by :mod:`calib.plotting`; stages return plot data and only
:meth:`PipelineResult.write <calib.evaluation.pipeline.PipelineResult.write>` draws and saves them.
"""
