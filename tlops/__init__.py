"""tlops: transfer learning of image classifiers as an orchestrated MLOps workflow.

The domain package: plain typed Python, never imports Prefect.
"""

__version__ = "0.1.0"
