"""The embedded default data: procedural motion, cameras, joint limits and the split maker."""
