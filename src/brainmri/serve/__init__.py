"""`brainmri serve`: the classifier behind an HTTP API (FastAPI on uvicorn) and a page.

`/v1/predict` takes `brainmri predict`'s `?tta=` and `?crop=`, `/v1/explain` `brainmri
explain`'s `?method=`, `?class=` and `?crop=` (app.py). On a CPU without a GPU stack the
service imports PyTorch only for the first `/v1/explain` (Grad-CAM) or a `tta` above 1.

Modules: `engine` (the only link to the inference core), `gate` (API key, size and content-type
checks before a body is read), `batcher` (concurrent requests share one model call, off the
event loop), `app` (routes, status codes, errors as JSON), `server` (uvicorn), `static/` (the
page: plain HTML/JS/CSS, no external resources).
"""
