"""The body: the SMPL-format body model (procedural or converted) and its mesh hierarchy."""
