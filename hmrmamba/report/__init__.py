"""Documents and comparisons: the report, the results tables, MLflow comparisons, plots, reliability."""
