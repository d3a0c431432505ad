"""greeter: a second small service on the same hosts as hello, on its own port."""

from __future__ import annotations

import os

from fastapi import FastAPI

RELEASE = os.environ.get("FLIPBACK_RELEASE", "unknown")

app = FastAPI(title="greeter")


@app.get("/health")
def health() -> dict[str, object]:
    return {"ok": True, "service": "greeter", "release": RELEASE}


@app.get("/greet/{name}")
def greet(name: str) -> dict[str, str]:
    return {"greeting": f"Hello, {name}!", "release": RELEASE}
