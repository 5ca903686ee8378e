"""The simulator's createbytranslate and its pushes (Akool's webhook), over real HTTP on loopback.

Pushes land in a small receiver that checks the signature and decrypts with its own AES code below,
written from the documented algorithm (SPEC §1): neither app.akool_push (the relay's decoder) nor
app.sandbox.akool_push (the simulator's encoder) is used to read them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.cli import build_parser
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import CREATE_PATH, INFO_PATH, ManualClock, Simulator, SimulatorConfig
from tests.support.relay import wait_until

CLIENT_ID = "sim-client-0001"  # shorter than 16 bytes: the IV is NUL-padded
API_KEY = "k" * 24 + "12345678"  # 32 bytes: Akool's API key is the client secret
KEY = {"x-api-key": API_KEY}


def decode_push(body: dict[str, Any], client_id: str = CLIENT_ID, secret: str = API_KEY) -> dict[str, Any]:
    """Check the signature and decrypt `dataEncrypt`, by hand: sha1 of the four sorted strings; AES-CBC
    with key = the secret, IV = the client id's first 16 bytes NUL-padded; PKCS#7."""
    assert set(body) == {"signature", "dataEncrypt", "timestamp", "nonce"}
    assert isinstance(body["timestamp"], int) and isinstance(body["nonce"], int)
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000  # epoch ms
    parts = sorted([client_id, str(body["timestamp"]), str(body["nonce"]), body["dataEncrypt"]])
    assert body["signature"] == hashlib.sha1("".join(parts).encode()).hexdigest()
    iv = client_id.encode()[:16].ljust(16, b"\0")
    decryptor = Cipher(algorithms.AES(secret.encode()), modes.CBC(iv)).decryptor()
    padded = decryptor.update(base64.b64decode(body["dataEncrypt"])) + decryptor.finalize()
    pad = padded[-1]
    assert 1 <= pad <= 16 and padded[-pad:] == bytes([pad]) * pad
    data: dict[str, Any] = json.loads(padded[:-pad])
    return data


@dataclass
class Arrival:
    body: dict[str, Any]
    data: dict[str, Any]
    at: float


@dataclass
class PushReceiver:
    """Answers `answers[i]` to the i-th request (then 200); decodes every body it gets."""

    answers: list[int] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/push", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        self.arrivals.append(Arrival(body, decode_push(body), time.time()))
        status = self.answers.pop(0) if self.answers else 200
        return Response(b"ok", status_code=status)

    def said(self) -> list[tuple[str, int]]:
        return [(a.data["_id"], a.data["status"]) for a in self.arrivals]


@dataclass
class Rig:
    sim: Simulator
    clock: ManualClock
    client: httpx.AsyncClient
    receiver: PushReceiver
    push_url: str

    async def create(self, language: str = "fr", **extra: Any) -> dict[str, Any]:
        body = {"url": "https://example.com/in.mp4", "language": language, "webhookUrl": self.push_url}
        r = await self.client.post(CREATE_PATH, json={**body, **extra}, headers=KEY)
        assert r.status_code == 200
        answer: dict[str, Any] = r.json()
        return answer

    async def status(self, vid: str) -> int:
        r = await self.client.get(INFO_PATH, params={"video_model_id": vid}, headers=KEY)
        status: int = r.json()["data"]["video_status"]
        return status


@contextlib.asynccontextmanager
async def rig(manual: bool = True, **config: Any) -> AsyncIterator[Rig]:
    settings: dict[str, Any] = {
        "queue_seconds": 1.0,
        "process_seconds": 2.0,
        "api_key": API_KEY,
        "client_id": CLIENT_ID,
        "push_retry_delays": (0.01, 0.01),
        **config,
    }
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(**settings), clock=clock if manual else None)
    receiver = PushReceiver()
    async with (
        serve_in_background(sim.app) as sim_url,
        serve_in_background(receiver.app) as push_base,
        httpx.AsyncClient(base_url=sim_url, timeout=5) as client,
    ):
        yield Rig(sim, clock, client, receiver, f"{push_base}/push")


async def test_create_one_language_plays_a_new_id_through_its_lifecycle() -> None:
    async with rig() as r:
        answer = await r.create("fr", source_language="en", lipsync=True, speaker_num=2)
        assert answer["code"] == 1000 and answer["msg"] == "OK" and "all_results" not in answer
        data = answer["data"]
        vid = data["_id"]
        assert len(vid) == 24 and int(vid, 16) >= 0
        assert data["video_status"] == 1 and data["language"] == "fr" and data["webhookUrl"] == r.push_url
        assert data["source_language"] == "en" and data["lipsync"] is True

        assert len(r.sim.creates) == 1
        record = r.sim.creates[0]
        assert record.code == 1000 and record.ids == [vid] and record.body["speaker_num"] == 2

        info = (await r.client.get(INFO_PATH, params={"video_model_id": vid}, headers=KEY)).json()
        assert info["data"]["_id"] == vid and info["data"]["video_status"] == 1
        r.clock.advance(1.5)
        assert await r.status(vid) == 2
        r.clock.advance(2)
        assert await r.status(vid) == 3

        stats = (await r.client.get("/_sim/stats")).json()
        assert stats["create_count"] == 1 and stats["creates"][0]["ids"] == [vid]


async def test_create_several_languages_answers_all_results() -> None:
    async with rig() as r:
        answer = await r.create("fr, de,ja,")
        results = answer["all_results"]
        assert [x["data"]["language"] for x in results] == ["fr", "de", "ja"]
        assert all(x["code"] == 1000 and x["msg"] == "OK" for x in results)
        ids = [x["data"]["_id"] for x in results]
        assert len(set(ids)) == 3 and answer["data"] == results[0]["data"]
        assert r.sim.creates[0].ids == ids and len(r.sim.creates) == 1
        r.clock.advance(10)
        for vid in ids:
            assert await r.status(vid) == 3


async def test_create_errors() -> None:
    async with rig() as r:
        good = {"url": "https://example.com/in.mp4", "language": "fr"}

        async def code(body: Any = good, headers: dict[str, str] = KEY) -> dict[str, Any]:
            resp = await r.client.post(CREATE_PATH, json=body, headers=headers)
            assert resp.status_code == 200
            answer: dict[str, Any] = resp.json()
            assert ("data" in answer) == (answer["code"] == 1000)
            return answer

        assert (await code(headers={}))["code"] == 1102
        assert (await code(headers={"x-api-key": "nope"}))["code"] == 1101
        assert (await code({"language": "fr"}))["code"] == 1003
        assert (await code({"url": "https://x/y.mp4", "language": " , "}))["code"] == 1003
        assert (await code([1, 2]))["code"] == 1003
        no_json = await r.client.post(CREATE_PATH, content=b"{", headers=KEY)
        assert no_json.json()["code"] == 1003

        r.sim.set_create_faults(error_code=1006, error_msg="insufficient credit")
        assert await code() == {"code": 1006, "msg": "insufficient credit"}
        r.sim.set_create_faults(fail_languages=["de"])
        answer = await code({**good, "language": "de,fr"})
        failed, ok = answer["all_results"]
        assert failed["code"] == 1015 and failed["msg"] and failed["data"] == {"language": "de"}
        assert ok["code"] == 1000 and answer["data"] == ok["data"]  # data: the first that was made
        all_failed = await code({**good, "language": "de"})
        assert all_failed["code"] == 1015

        # over HTTP
        r_faults = await r.client.post(
            "/_sim/create_faults", json={"error_code": 1103, "error_msg": "banned"}
        )
        assert r_faults.json()["create_faults"]["error_code"] == 1103
        assert await code() == {"code": 1103, "msg": "banned"}
        assert (await r.client.post("/_sim/create_faults", json={"delay": -1})).status_code == 422
        await r.client.post("/_sim/create_faults", json={})
        assert (await code())["code"] == 1000

        codes = [c.code for c in r.sim.creates]
        assert codes == [1102, 1101, 1003, 1003, 1003, 1003, 1006, 1000, 1015, 1103, 1000]
        assert [len(c.ids) for c in r.sim.creates] == [0] * 7 + [1, 0, 0, 1]
        with pytest.raises(ValueError):
            r.sim.set_create_faults(delay=-1)


async def test_a_delayed_create_has_made_its_job_before_the_caller_gives_up() -> None:
    async with rig() as r:
        r.sim.set_create_faults(delay=0.5)
        with pytest.raises(httpx.ReadTimeout):
            await r.client.post(
                CREATE_PATH, json={"url": "https://x/y.mp4", "language": "fr"}, headers=KEY, timeout=0.1
            )
        assert len(r.sim.creates) == 1
        (vid,) = r.sim.creates[0].ids
        assert await r.status(vid) == 1  # it exists, and costs, though nobody heard the answer


async def test_pushes_on_2_3_and_4_in_order_with_valid_signatures() -> None:
    async with rig() as r:
        done = (await r.create())["data"]["_id"]
        failing = (await r.create())["data"]["_id"]
        r.sim.script(failing, outcome="failed")
        assert await r.sim.flush_pushes() == 0  # queueing: nothing to say
        r.clock.advance(1.5)
        assert await r.sim.flush_pushes() == 2
        assert sorted(r.receiver.said()) == sorted([(done, 2), (failing, 2)])
        r.clock.advance(2)
        await r.sim.flush_pushes()
        assert await r.sim.flush_pushes() == 0  # each change once
        said = r.receiver.said()
        assert [s for vid, s in said if vid == done] == [2, 3]
        assert [s for vid, s in said if vid == failing] == [2, 4]
        by_status = {(a.data["_id"], a.data["status"]): a.data for a in r.receiver.arrivals}
        assert by_status[(done, 3)] == {
            "_id": done,
            "status": 3,
            "type": "video translate",
            "url": f"https://sim.akool.local/videos/{done}.mp4",
        }
        assert by_status[(done, 2)]["url"] == "" and by_status[(failing, 4)]["url"] == ""
        assert len({a.body["nonce"] for a in r.receiver.arrivals}) >= 2

        records = r.sim.pusher.pushes
        assert len(records) == 4 and all(p.http_status == 200 and p.attempt == 1 for p in records)
        stats = (await r.client.get("/_sim/stats")).json()
        assert stats["pushes_sent"] == 4 and stats["pushes_ok"] == 4 and stats["push_targets"] == 2
        assert {(p["video_model_id"], p["status"]) for p in stats["pushes"]} == set(said)
        assert all(time.time() - 10 < p["at"] <= time.time() for p in stats["pushes"])


async def test_a_skipped_processing_status_is_still_pushed_first() -> None:
    async with rig() as r:
        vid = (await r.create())["data"]["_id"]
        r.clock.advance(100)  # straight from queueing to completed between two looks
        await r.sim.flush_pushes()
        assert r.receiver.said() == [(vid, 2), (vid, 3)]


async def test_push_to_any_id_and_pushes_without_flush_on_the_real_clock() -> None:
    async with rig(manual=False, queue_seconds=0.05, process_seconds=0.15) as r:
        r.sim.push_to("job-7", r.push_url)
        first = (await r.client.get(INFO_PATH, params={"video_model_id": "job-7"}, headers=KEY)).json()
        assert first["data"]["video_status"] == 1  # first asked about: its lifecycle starts
        await wait_until(lambda: len(r.receiver.arrivals) >= 2, 5, "both pushes")
        assert r.receiver.said() == [("job-7", 2), ("job-7", 3)]
        ended = first["data"]["create_time"] / 1000 + 0.2
        assert r.receiver.arrivals[1].at - ended < 0.5  # the background look, every 20 ms
        assert "job-7" not in r.sim.terminal_sent_at  # pushes are not info answers


async def test_a_push_is_retried_until_200_then_given_up() -> None:
    async with rig() as r:
        r.receiver.answers = [500, 404]
        r.sim.push_to("job-r", r.push_url)
        await r.status("job-r")
        r.clock.advance(1.5)
        await r.sim.flush_pushes()
        assert [(p.attempt, p.http_status) for p in r.sim.pusher.pushes] == [(1, 500), (2, 404), (3, 200)]
        assert len(r.receiver.arrivals) == 3
        assert len({json.dumps(a.body) for a in r.receiver.arrivals}) == 1  # the same push each time

        r.receiver.answers = [503] * 10
        r.clock.advance(2)
        await r.sim.flush_pushes()  # 1 + len(push_retry_delays) attempts, then it gives up
        assert [(p.attempt, p.http_status) for p in r.sim.pusher.pushes[3:]] == [(1, 503), (2, 503), (3, 503)]


async def test_a_push_to_nowhere_records_no_answer() -> None:
    async with rig(push_retry_delays=()) as r:
        r.sim.push_to("job-n", "http://127.0.0.1:9/push")  # discard port: connection refused
        await r.status("job-n")
        r.clock.advance(1.5)
        await r.sim.flush_pushes()
        (record,) = r.sim.pusher.pushes
        assert record.http_status is None and record.error


async def test_drop() -> None:
    async with rig() as r:
        vid = (await r.create())["data"]["_id"]
        r.sim.set_push_faults(drop=1.0)
        r.clock.advance(10)
        await r.sim.flush_pushes()
        assert r.receiver.arrivals == [] and r.sim.pusher.pushes == []
        assert [(d.status, d.fault) for d in r.sim.pusher.dropped] == [(2, "drop"), (3, "drop")]
        assert await r.status(vid) == 3  # the job ends all the same
        assert r.sim.stats()["pushes_dropped"] == 2


async def test_delay() -> None:
    async with rig() as r:
        vid = (await r.create())["data"]["_id"]
        r.sim.set_push_faults(delay=0.3)
        r.clock.advance(1.5)
        started = time.time()
        await r.sim.flush_pushes()
        assert r.receiver.said() == [(vid, 2)]
        assert r.receiver.arrivals[0].at - started >= 0.3
        (record,) = r.sim.pusher.pushes
        assert record.at - record.changed_at >= 0.3


async def test_repeat() -> None:
    async with rig() as r:
        vid = (await r.create())["data"]["_id"]
        r.sim.set_push_faults(repeat=True)
        r.clock.advance(10)
        await r.sim.flush_pushes()
        assert r.receiver.said() == [(vid, 2), (vid, 2), (vid, 3), (vid, 3)]
        bodies = [a.body for a in r.receiver.arrivals]
        assert bodies[0] == bodies[1] and bodies[2] == bodies[3]  # a replay: the very same body
        assert [p.fault for p in r.sim.pusher.pushes] == [None, "repeat", None, "repeat"]


async def test_reorder() -> None:
    async with rig() as r:
        vid = (await r.create())["data"]["_id"]
        r.sim.set_push_faults(reorder=True)
        r.clock.advance(1.5)
        await r.sim.flush_pushes()
        assert r.receiver.arrivals == [] and r.sim.stats()["pushes_held"] == 1  # held for the next one
        r.clock.advance(2)
        await r.sim.flush_pushes()
        assert r.receiver.said() == [(vid, 3), (vid, 2)]
        assert [p.fault for p in r.sim.pusher.pushes] == [None, "reorder"]


async def test_lie() -> None:
    async with rig() as r:
        vid = (await r.create())["data"]["_id"]
        r.sim.set_push_faults(lie=True)
        r.clock.advance(1.5)
        await r.sim.flush_pushes()
        assert r.receiver.said() == [(vid, 3)]
        assert r.receiver.arrivals[0].data["url"] == f"https://sim.akool.local/videos/{vid}.mp4"
        assert await r.status(vid) == 2  # Akool still says processing
        assert r.sim.pusher.pushes[0].fault == "lie"
        r.sim.set_push_faults()
        r.clock.advance(2)
        await r.sim.flush_pushes()
        assert r.receiver.said() == [(vid, 3), (vid, 3)]  # the true one, when it is true


async def test_http_controls_for_pushes() -> None:
    async with rig() as r:
        ok = await r.client.post("/_sim/push_to", json={"video_model_id": "job-h", "url": r.push_url})
        assert ok.status_code == 200
        assert (await r.client.post("/_sim/push_to", json={"video_model_id": "x"})).status_code == 422
        faults = await r.client.post("/_sim/push_faults", json={"repeat": True, "delay": 0.01})
        assert faults.json()["push_faults"] == {
            "drop": 0.0,
            "delay": 0.01,
            "repeat": True,
            "reorder": False,
            "lie": False,
        }
        assert (await r.client.post("/_sim/push_faults", json={"drop": 2})).status_code == 422
        await r.status("job-h")
        r.clock.advance(1.5)
        flushed = (await r.client.post("/_sim/flush_pushes")).json()
        assert flushed in ({"queued": 1}, {"queued": 0})  # the 20 ms background check may queue it first
        assert r.receiver.said() == [("job-h", 2), ("job-h", 2)]
        stats = (await r.client.get("/_sim/stats")).json()
        assert stats["pushes_sent"] == 2 and stats["push_faults"]["repeat"] is True
        reset = (await r.client.post("/_sim/reset_stats")).json()
        assert reset["pushes"] == [] and reset["creates"] == [] and reset["push_targets"] == 1


async def test_push_credentials() -> None:
    sim = Simulator(SimulatorConfig(api_key="short", client_id=CLIENT_ID))
    with pytest.raises(ValueError, match="16/24/32"):
        sim.push_to("a", "http://127.0.0.1:9/")
    assert sim.pusher.credentials() is None
    secret = "s" * 16
    sim = Simulator(SimulatorConfig(api_key=API_KEY, client_id=CLIENT_ID, client_secret=secret))
    assert sim.pusher.credentials() == (CLIENT_ID, secret)  # the client secret, when it fits AES
    sim = Simulator(SimulatorConfig(api_key=API_KEY, client_id=CLIENT_ID, client_secret="not-aes"))
    assert sim.pusher.credentials() == (CLIENT_ID, API_KEY)  # else the API key
    assert Simulator(SimulatorConfig(api_key=API_KEY)).pusher.credentials() is None  # no client id


async def test_a_create_with_webhook_url_but_no_push_credentials_still_creates() -> None:
    async with rig(client_id=None) as r:
        answer = await r.create()
        assert answer["code"] == 1000 and r.sim.pusher.targets == {}


def test_cli_simulator_takes_push_credentials() -> None:
    args = build_parser().parse_args(["simulator", "--client-id", "cid", "--client-secret", "s" * 24])
    assert args.client_id == "cid" and args.client_secret == "s" * 24
