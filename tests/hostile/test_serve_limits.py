"""The server's memory is bounded by design, its sign-in is throttled and expires, and a request
with fields it does not know is refused: each against a real server on 127.0.0.1."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from ..serve_support import example_files, multipart, png_of, running_server

pytest.importorskip("fastapi")


def uniform_png(width: int, height: int, color=(120, 80, 60)) -> bytes:
    """A big photo that costs little to send: one colour compresses to a few hundred KB."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def test_big_cheap_uploads_are_refused_by_the_pixel_budgets():
    big = uniform_png(9000, 9000)  # 81 MP, under Pillow's bomb limit, about 250 KB
    assert len(big) < 1_000_000
    with running_server(max_request_pixels=60_000_000, max_queue_pixels=100_000_000) as (
        url,
        service,
    ):
        with httpx.Client(base_url=url, timeout=60) as client:
            files = {**example_files(), "person": big}
            pixels = sum(
                Image.open(io.BytesIO(data)).width * Image.open(io.BytesIO(data)).height
                for data in files.values()
            )
            response = client.post("/v1/jobs", **multipart(files, steps=1))
            assert response.status_code == 413, response.text
            assert response.json()["error"] == (
                f"the request's images have {pixels / 1e6:.1f} MP in total, over the limit of "
                "60.0 MP per request"
            )
            # A request under the per-request budget; the queue's budget then stops the rest.
            medium = uniform_png(5000, 5000)  # 25 MP
            codes = []
            for seed in range(4):
                white = uniform_png(5000, 5000, (255, 255, 255))
                files = {**example_files(), "person": medium, "mask": white}
                r = client.post("/v1/jobs", **multipart(files, steps=60, seed=seed))
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert "queue is full" in r.json()["error"]
                usage = service.jobs.usage()
                # what the queue holds stays under its budget at every moment
                assert usage["pixels"] <= 100_000_000, usage
            assert codes[0] == 202 and 429 in codes, codes


def test_finished_results_are_kept_encoded_and_within_their_budget():
    with running_server(max_result_bytes=1_500_000) as (url, service):
        with httpx.Client(base_url=url, timeout=60) as client:
            ids = []
            for seed in range(6):
                r = client.post("/v1/jobs", **multipart(example_files(), steps=1, seed=seed))
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            deadline = time.monotonic() + 120
            while service.jobs.usage()["queued"] or service.jobs.usage()["running"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            usage = service.jobs.usage()
            assert 0 < usage["result_bytes"] <= 1_500_000, usage
            assert usage["pixels"] == 0  # no decoded image is kept for a finished job
            for job_id in ids:
                job = service.jobs.get(job_id)
                if job is not None:
                    assert job.item is None
                    assert all(isinstance(data, bytes) for data in job.outcome.images)
            # the newest result is there; the oldest made room for it (404, not a crash)
            assert client.get(f"/v1/jobs/{ids[-1]}/result").status_code == 200
            assert client.get(f"/v1/jobs/{ids[0]}/result").status_code == 404


def test_unknown_fields_are_refused_and_categories_read_as_people_write_them():
    with running_server() as (url, _):
        with httpx.Client(base_url=url, timeout=60) as client:
            for extra in ({"width": "512"}, {"height": "64"}, {"Steps": "3"}):
                r = client.post("/v1/tryon", **multipart(example_files(), steps=1, **extra))
                assert r.status_code == 400, r.text
                name = next(iter(extra))
                assert r.json()["error"].startswith(f"unknown field {name!r}; the fields are: ")
            for category in (" DRESSES ", "Upper_Body", "lower_body\t"):
                r = client.post(
                    "/v1/tryon", **multipart(example_files(), steps=1, category=category)
                )
                assert r.status_code == 200, (category, r.text)


# ---------------------------------------------------------------------------- sign-in
def test_sign_in_is_throttled_and_sessions_expire_and_end():
    key = "a-long-enough-key-for-tests"
    with running_server(api_key=key, session_ttl_s=2.0) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            login = client.post("/login", data={"key": key})
            assert login.status_code == 303
            cookie = login.headers["set-cookie"]
            assert "Max-Age=2" in cookie and "Secure" not in cookie
            session = {"Cookie": cookie.split(";")[0]}
            assert client.get("/v1/info", headers=session).status_code == 200
            # another sign-in gets another session (not a fixed token)
            other = client.post("/login", data={"key": key}).headers["set-cookie"].split(";")[0]
            assert other != session["Cookie"]
            # sign-out ends that session at once
            assert client.get("/logout", headers={"Cookie": other}).status_code == 303
            assert client.get("/v1/info", headers={"Cookie": other}).status_code == 401
            # the first one expires by itself
            deadline = time.monotonic() + 30
            while client.get("/v1/info", headers=session).status_code == 200:
                assert time.monotonic() < deadline, "the session never expired"
                time.sleep(0.1)
            # behind an HTTPS proxy the cookie is Secure
            proxied = client.post(
                "/login", data={"key": key}, headers={"X-Forwarded-Proto": "https"}
            )
            assert "; Secure" in proxied.headers["set-cookie"]
            # wrong keys: a few, then 429 before the key is even compared (the right one too)
            codes = [client.post("/login", data={"key": f"guess{i}"}).status_code for i in range(8)]
            assert codes[:5] == [401] * 5 and 429 in codes[5:], codes
            throttled = client.post("/login", data={"key": key})
            assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
            bearer = client.get("/v1/info", headers={"Authorization": f"Bearer {key}"})
            assert bearer.status_code == 429  # the same address, the same throttle


def test_wrong_bearer_keys_are_throttled_too():
    with running_server(api_key="k" * 32) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            codes = [
                client.get("/v1/info", headers={"Authorization": f"Bearer x{i}"}).status_code
                for i in range(10)
            ]
            assert codes[:5] == [401] * 5 and codes[-1] == 429, codes


def test_a_request_arriving_in_one_piece_is_not_slowed(tmp_path):
    # the read timeout does not touch an ordinary request
    with running_server(read_timeout_s=2.0) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.post("/v1/tryon", **multipart(example_files(), steps=1))
            assert r.status_code == 200
            assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (512, 512, 3)
            assert png_of(Image.new("L", (2, 2)))
