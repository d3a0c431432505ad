"""hello: the example service flipback deploys. /health names the release it runs."""

from __future__ import annotations

import os

from fastapi import FastAPI

RELEASE = os.environ.get("FLIPBACK_RELEASE", "unknown")
GREETING = "Hello from flipback"

app = FastAPI(title="hello")


@app.get("/health")
def health() -> dict[str, object]:
    return {"ok": True, "service": "hello", "release": RELEASE}


@app.get("/")
def index() -> dict[str, str]:
    return {"message": GREETING, "release": RELEASE}
