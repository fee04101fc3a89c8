"""Images of stored instances: the frames of multi-frame instances, and decoded pixel data.

Below both the pipeline and the reports, which read the same pixels the same way.
"""
