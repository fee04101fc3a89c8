"""From stored instances to jobs: find short-axis cine stacks in a study and lay them out for inference."""
