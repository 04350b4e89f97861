"""Shared fixtures: a real Redis, free loopback ports, small image trees."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from retrieval_service import testing
from tests.imagegen import write_image_folder

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server `make test` guarantees; fails (not skips) when none answers."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"no Redis answers on {REDIS_URL}: run `make redis` ({exc})")
    return REDIS_URL


@pytest.fixture
def redis_namespace() -> str:
    """A key prefix unique to one test, so tests sharing the server never see each other's keys."""
    return f"sjft-test-{uuid.uuid4().hex[:12]}"


free_port = testing.free_port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def texture_tree(tmp_path_factory) -> Path:
    """A small ImageFolder of six texture classes, 8 PNGs each, 48 px."""
    root = tmp_path_factory.mktemp("textures")
    write_image_folder(root, per_class=8, size=48, seed=0)
    return root


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A fresh resnet18 state dict made with seed 0 (never downloaded): conv-bank specs and frozen trunks."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path
