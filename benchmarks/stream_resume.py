"""Cross-instance resume check: start a stream on instance A, drop it, resume on B.

    python benchmarks/stream_resume.py --a http://127.0.0.1:8000 --b http://127.0.0.1:8001

Both instances must share Postgres, Redis and `REDIS_PREFIX` (and the JWT secret). For
each trial: open `POST /api/v1/coaching/query/stream` on A, read `drop_after` events
(meta + a few deltas), close the connection; then `GET /api/v1/coaching/streams/{id}`
on B with `Last-Event-ID` set to the last id seen, read to the end, and check:

- the ids B sends start right after the last id A sent and increase by one (no gap,
  no duplicate), and the stream ends with `done`;
- the text joined from A's and B's deltas equals the stored assistant message
  (`GET /api/v1/conversations/{id}` on B), whose status is `complete`.

Some trials resume while A is still generating (B follows the Redis event log live),
others only after A has finished (B replays the buffered log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

API_KEY = "linkcoach-dev-api-key"
LONG_ANSWER = "[[emulator:chunks=40,chunk_interval_ms=60]]"


@dataclass
class Trial:
    index: int
    drop_after: int
    late: bool
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    ids_a: list[int] = field(default_factory=list)
    ids_b: list[int] = field(default_factory=list)
    chars: int = 0


def _parse_block(block: str) -> tuple[int | None, str, dict[str, Any]] | None:
    fields: dict[str, str] = {}
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    if "data" not in fields:
        return None
    ev_id = int(fields["id"]) if fields.get("id") else None
    return ev_id, fields.get("event", "message"), json.loads(fields["data"])


async def _events(response: httpx.Response) -> Any:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            parsed = _parse_block(block)
            if parsed is not None:
                yield parsed


async def one_trial(client: httpx.AsyncClient, a: str, b: str, token: str, trial: Trial) -> Trial:
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "question": f"재개 점검 {trial.index}: 팀 회의를 어떻게 바꾸면 좋을까요? {LONG_ANSWER}",
        "client_message_id": f"resume-{uuid.uuid4().hex[:12]}",
    }
    text_a: list[str] = []
    message_id = conversation_id = None
    async with client.stream(
        "POST", f"{a}/api/v1/coaching/query/stream", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            trial.problems.append(f"A answered {response.status_code}")
            return trial
        async for ev_id, event, data in _events(response):
            if ev_id is not None:
                trial.ids_a.append(ev_id)
            if event == "meta":
                message_id, conversation_id = data["message_id"], data["conversation_id"]
            elif event == "delta":
                text_a.append(data["text"])
            elif event in ("done", "error"):
                trial.problems.append(f"A finished ({event}) before the drop")
                return trial
            if len(trial.ids_a) >= trial.drop_after:
                break  # leaving the block closes the connection: the client "drops"
    if message_id is None:
        trial.problems.append("no meta event from A")
        return trial
    if trial.late:
        await asyncio.sleep(40 * 0.06 + 2.0)  # let A finish the answer first
    last_id = trial.ids_a[-1]
    text_b: list[str] = []
    terminal = None
    async with client.stream(
        "GET",
        f"{b}/api/v1/coaching/streams/{message_id}",
        headers={**headers, "Last-Event-ID": str(last_id)},
    ) as response:
        if response.status_code != 200:
            trial.problems.append(f"B answered {response.status_code}")
            return trial
        async for ev_id, event, data in _events(response):
            if ev_id is not None:
                trial.ids_b.append(ev_id)
            if event == "delta":
                text_b.append(data["text"])
            elif event == "meta" and data.get("replay"):
                trial.problems.append("B replayed the stored message instead of resuming")
            elif event in ("done", "error"):
                terminal = (event, data)
                break
    expected = list(range(last_id + 1, last_id + 1 + len(trial.ids_b)))
    if trial.ids_b != expected:
        trial.problems.append(f"ids after {last_id} are {trial.ids_b[:8]}..., not consecutive")
    if set(trial.ids_a) & set(trial.ids_b):
        trial.problems.append("duplicate event ids")
    if terminal is None or terminal[0] != "done":
        trial.problems.append(f"B ended with {terminal}")
    joined = "".join(text_a) + "".join(text_b)
    trial.chars = len(joined)
    r = await client.get(
        f"{b}/api/v1/conversations/{conversation_id}", headers=headers, params={"limit": 100}
    )
    if r.status_code != 200:
        trial.problems.append(f"conversation read answered {r.status_code}")
        return trial
    stored = next((m for m in r.json().get("messages", []) if m["id"] == message_id), None)
    if stored is None:
        trial.problems.append("assistant message not stored")
    else:
        if stored["content"] != joined:
            trial.problems.append(
                f"joined text ({len(joined)} chars) != stored ({len(stored['content'] or '')})"
            )
        if stored["status"] != "complete":
            trial.problems.append(f"stored status {stored['status']}")
    trial.ok = not trial.problems
    return trial


async def resume_check(
    a: str, b: str, *, trials: int = 24, api_key: str = API_KEY, parallel: int = 8
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.post(
            f"{a}/api/v1/auth/token",
            headers={"X-API-Key": api_key},
            json={"user_id": f"resume-{uuid.uuid4().hex[:8]}", "leadership_type": "HLH"},
        )
        r.raise_for_status()
        token = r.json()["access_token"]
        sem = asyncio.Semaphore(parallel)

        async def run(t: Trial) -> Trial:
            async with sem:
                try:
                    return await one_trial(client, a, b, token, t)
                except Exception as exc:  # noqa: BLE001 - a crashed trial is a failed trial
                    t.problems.append(f"{type(exc).__name__}: {exc}")
                    return t

        plan = [Trial(index=i, drop_after=2 + i % 5, late=i % 3 == 2) for i in range(trials)]
        done = await asyncio.gather(*(run(t) for t in plan))
    return {
        "trials": len(done),
        "ok": sum(t.ok for t in done),
        "live_resumes": sum(not t.late for t in done),
        "after_finish_resumes": sum(t.late for t in done),
        "failures": [asdict(t) for t in done if not t.ok],
        "example": asdict(done[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="instance that starts the streams")
    parser.add_argument("--b", required=True, help="instance that resumes them")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args()
    result = asyncio.run(resume_check(args.a, args.b, trials=args.trials, api_key=args.api_key))
    sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return 0 if result["ok"] == result["trials"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
