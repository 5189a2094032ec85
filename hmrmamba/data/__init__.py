"""Datasets: the HDF5 schema, readers, the synthetic maker and the windowing Dataset."""
