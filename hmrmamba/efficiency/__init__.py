"""Table 4: model size, cost (FLOPs), speed and memory."""
