"""Motion-capture files (BVH, AMASS) as motion sources."""
