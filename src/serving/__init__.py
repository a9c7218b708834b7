"""The serving layer: a Spark-free FastAPI app that scores loan applications with the champion.

`create_app` lives in `src.serving.app`; this package imports nothing heavy on its own.
"""
