"""Datasets: the HDF5 split schema, loading windows for training and video decoding; the synthetic maker (`synthetic/`), motion-capture files (`mocap/`) and the real readers (`real/`)."""
