"""``poetry-gpt serve``: a local web page and HTTP API over one model, with dynamic batching.

Needs the ``serve`` extra (``pip install -e '.[serve]'``: Starlette and uvicorn); importing this
package imports neither them nor TensorFlow (``app`` and ``batcher`` do).
"""
