"""One module per DVC stage: ``python -m hmrmamba.stages.<name>``.

Each module holds glue only: it reads its params section, calls the library, writes its outputs
atomically and records a run in MLflow. Prefect tasks call the same ``run`` functions.
"""
