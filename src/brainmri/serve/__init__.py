"""`brainmri serve`: the classifier behind an HTTP API (FastAPI on uvicorn) and a page.

Modules: `engine` (the only link to the inference core), `gate` (API key, size and content-type
checks before a body is read), `batcher` (concurrent requests share one model call, off the
event loop), `app` (routes, status codes, errors as JSON), `server` (uvicorn), `static/` (the
page: plain HTML/JS/CSS, no external resources).
"""
